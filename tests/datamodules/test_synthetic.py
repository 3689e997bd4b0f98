"""`ofa.datamodules.synthetic`: deterministic bytes, the shard schema, closed answer/class sets, idempotence."""
from __future__ import annotations

import io
import json
import multiprocessing
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ofa.datamodules.synthetic import SyntheticConfig, ensure_synthetic_dataset, main
from ofa.tokenizer import OFATokenizer

TINY = dict(num_train=6, num_val=3, num_test=0, image_size=48, shard_size=4, vocab_size=300, num_codes=8)


def records(path: Path) -> list[tuple[dict, Image.Image]]:
    out = []
    with tarfile.open(path) as tar:
        names = tar.getnames()
        for name in names:
            if name.endswith(".json"):
                record = json.loads(tar.extractfile(name).read())
                image = Image.open(io.BytesIO(tar.extractfile(name[:-5] + ".jpg").read()))
                out.append((record, image))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = ensure_synthetic_dataset(tmp_path / "a", **TINY)
    b = ensure_synthetic_dataset(tmp_path / "b", **TINY)
    c = ensure_synthetic_dataset(tmp_path / "c", **{**TINY, "seed": 1})
    files = sorted(p.name for p in a.iterdir() if p.is_file())
    assert files == ["answers.json", "classes.json", "sizes.json", "summary.json", "tokenizer.json",
                     "train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["image_gen", "text"]  # synthetic_image, _text
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train-000000.tar").read_bytes() != (c / "train-000000.tar").read_bytes()


def test_records_follow_the_shard_schema(synthetic_data_dir: Path, tokenizer: OFATokenizer) -> None:
    answers = set(json.loads((synthetic_data_dir / "answers.json").read_text()))
    classes = set(json.loads((synthetic_data_dir / "classes.json").read_text()))
    sizes = json.loads((synthetic_data_dir / "sizes.json").read_text())
    shards = sorted(synthetic_data_dir.glob("val-*.tar"))
    rows = [r for shard in shards for r in records(shard)]
    assert len(rows) == sizes["val"] == 16
    for record, image in rows:
        assert image.size == (record["width"], record["height"]) == (64, 64)
        assert len(record["captions"]) >= 3 and all(isinstance(c, str) for c in record["captions"])
        assert record["label"] in classes
        for q in record["vqa"]:
            assert q["question"].endswith("?") and set(q["answers"]) <= answers
            assert max(q["answers"].values()) == 1.0
        for ref in record["refs"]:
            x0, y0, x1, y1 = ref["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert {e["label"] for e in record["entailment"]} == {"yes", "no", "maybe"}
        assert all(e["premise"] in record["captions"] for e in record["entailment"])
    assert len(tokenizer.encode(" a red circle above a blue square")) == 7  # the world's words are tokens


def test_ensure_is_idempotent_and_checks_the_config(tmp_path: Path) -> None:
    out = ensure_synthetic_dataset(tmp_path / "d", **TINY)
    stamp = (out / "train-000000.tar").stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path / "d", **TINY) == out
    assert (out / "train-000000.tar").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="generated with"):
        ensure_synthetic_dataset(tmp_path / "d", **{**TINY, "seed": 3})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        ensure_synthetic_dataset(tmp_path / "other", **TINY)


def _ensure_tiny(out: str) -> str:
    return str(ensure_synthetic_dataset(out, **TINY))


def test_concurrent_ensure_calls_agree(tmp_path: Path) -> None:
    """DDP ranks may all call ensure_synthetic_dataset at once: one rename wins, nobody fails."""
    with multiprocessing.get_context("fork").Pool(3) as pool:
        outs = pool.map(_ensure_tiny, [str(tmp_path / "race")] * 3)
    assert len(set(outs)) == 1 and (tmp_path / "race" / "summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["race"]  # temporary folders are gone


def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--out", str(tmp_path / "cli"), "--num-train", "5", "--num-val", "2", "--num-test", "2",
          "--image-size", "32", "--shard-size", "2", "--vocab-size", "300", "--num-codes", "8"])
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["sizes"] == {"train": 5, "val": 2, "test": 2}
    assert summary["shards"]["train"] == "train-{000000..000002}.tar"
    assert summary["config"] == {**SyntheticConfig().__dict__, "num_train": 5, "num_val": 2, "num_test": 2,
                                 "image_size": 32, "shard_size": 2, "vocab_size": 300, "num_codes": 8}
    assert "train" in capsys.readouterr().out
