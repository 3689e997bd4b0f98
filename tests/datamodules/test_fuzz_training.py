"""Fuzz-style end-to-end check: a real `train.py` run (fit, then test) on shards with every kind of damage
completes, and reports what it skipped by reason.

The data: a shard mixing good samples with broken JSON, a sample without JSON, an undecodable image, an
image over the pixel limit, a sample without captions and one whose captions make the task fail; a truncated
tar; a file that is not a tar; a shard path that does not exist; and the shard converted by
`ofa-convert-data caption` from a TSV with bad rows of every kind the caption layout can have.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image

from ofa.datamodules.convert import convert_tsv
from ofa.datamodules.shards import read_shard
from subprocess_runs import run_command

ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = 20_000  # data.max_image_pixels of the run: the synthetic 64x64 images pass, a 200x200 does not
# what one evaluation pass over the shard list below skips, by the reasons of `ofa.datamodules.shards`
PER_PASS = {"bad_json": 2, "bad_image": 1, "too_many_pixels": 1, "missing_fields": 1, "preprocess_error": 1,
            "truncated_tar": 1, "not_tar": 1, "missing_file": 1}
# the TSV's bad rows, by the converter's reasons
TSV_BAD = {"wrong column count": 2, "empty line": 1, "bad encoding": 1, "missing field": 2, "bad base64": 1,
           "bad image": 1}


def good_samples(pattern_dir: Path, n: int) -> list[dict]:
    """The first `n` raw samples (`__key__`, `jpg`, `json` bytes) of the synthetic train shards."""
    out: list[dict] = []
    for shard in sorted(pattern_dir.glob("train-*.tar")):
        out += [{k: v for k, v in s.items() if k != "__url__"} for s in read_shard(str(shard), None)]
        if len(out) >= n:
            return out[:n]
    raise AssertionError("not enough synthetic samples")


def renamed(sample: dict, key: str, **members: bytes) -> dict:
    return {**sample, "__key__": key, **members}


def image_bytes(size: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for s in samples:
            writer.write(s)
    return str(path)


def damaged_shards(out: Path, good: list[dict]) -> list[str]:
    """mixed.tar, truncated.tar, garbage.tar and a missing path (see the module docstring)."""
    meta = json.loads(good[0]["json"])
    mixed = [renamed(good[0], "g0"), renamed(good[1], "badjson", json=b'{"id": "x", "captions": ['),
             {"__key__": "nojson", "jpg": good[2]["jpg"]},
             renamed(good[3], "badimage", jpg=b"\xff\xd8\xff\xe0 truncated jpeg"),
             renamed(good[4], "bomb", jpg=image_bytes(200)),
             renamed(good[5], "nocaptions", json=json.dumps({**meta, "captions": None}).encode()),
             renamed(good[6], "failing", json=json.dumps({**meta, "captions": 5}).encode()),  # task raises
             renamed(good[7], "g1")]
    write_tar(out / "mixed.tar", mixed)
    full = write_tar(out / "full.tar", [renamed(s, f"t{i}") for i, s in enumerate(good[8:12])])
    with tarfile.open(full) as tar:
        cut = tar.getmember("t2.jpg").offset_data + 100  # in the middle of the third image
    (out / "truncated.tar").write_bytes(Path(full).read_bytes()[:cut])
    (out / "garbage.tar").write_bytes(b"<html>404 not found</html>\n" * 40)
    return [str(out / name) for name in ("mixed.tar", "truncated.tar", "garbage.tar", "missing.tar")]


def converted_tsv_shard(out: Path, good: list[dict]) -> tuple[str, dict]:
    """An OFA caption TSV (uniq-id, image-id, caption, objects, image) with good and bad rows, converted."""
    def row(uid: str, caption: str, image: bytes | str) -> bytes:
        b64 = image if isinstance(image, str) else base64.b64encode(image).decode()
        return f"{uid}\timg-{uid}\t{caption}\t\t{b64}\n".encode()

    jpgs = [s["jpg"] for s in good[12:16]]
    lines = [row("tsv0", "a shape", jpgs[0]),
             b"tsv1\timg\ttoo few columns\n",
             row("tsv2", "a shape", jpgs[1]).replace(b"\t\t", b"\t\textra\t"),  # 6 columns
             b"\n",
             b"tsv4\timg\tcaf\xe9 in latin-1\t\t" + base64.b64encode(jpgs[2]) + b"\n",
             row("tsv5", "", jpgs[2]),  # empty caption
             row("", "no id", jpgs[2]),
             row("tsv6", "not base64", "!!!***###"),
             row("tsv7", "not an image", b"GIF89a but not really"),
             row("tsv8", "a shape", jpgs[3])]
    tsv = out / "caption_train.tsv"
    tsv.write_bytes(b"".join(lines))
    summary = convert_tsv("caption", [tsv], out / "converted", split="train", log=io.StringIO())
    return str(out / "converted" / "train-000000.tar"), summary


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = run_command([sys.executable, str(ROOT / "train.py"), *args], ROOT, env)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def summary_line(output: str, stage: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """(total, by reason, by split) of the `DataSkipLogger` line of `stage`."""
    match = re.search(rf"^data skipped during {stage} \(1 rank\): (\d+) - (.*) \((.*)\)$", output, re.M)
    assert match, f"no skip summary for {stage} in:\n{output[-3000:]}"
    pairs = [[p.split(": ") for p in group.split(", ")] for group in match.groups()[1:]]
    return int(match.group(1)), *({k: int(v) for k, v in group} for group in pairs)


def test_training_on_damaged_data_completes_and_reports_skips(synthetic_data_dir: Path, tmp_path: Path) -> None:
    good = good_samples(synthetic_data_dir, 16)
    shards = damaged_shards(tmp_path, good)
    converted, conversion = converted_tsv_shard(tmp_path, good)
    assert conversion["total"] == 2 and conversion["skipped"] == TSV_BAD  # every bad row kind, skipped
    all_shards = "::".join([converted, *shards])

    run_dir = tmp_path / "run"
    proc = run_train([
        f"hydra.run.dir={run_dir}", "task=caption", "model=ofa_nano", "logger=csv", "data.synthetic_dir=null",
        f"data.train_shards='{all_shards}'", f"data.val_shards='{all_shards}'", f"data.test_shards='{all_shards}'",
        f"tokenizer.path={synthetic_data_dir}/tokenizer.json", f"data.max_image_pixels={MAX_PIXELS}",
        "data.num_workers=1", "data.batch_size=4", "data.eval_batch_size=8", "data.batches_per_epoch=4",
        "data.shuffle_buffer=8", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "trainer.limit_val_batches=1.0",
        "trainer.log_every_n_steps=1",
        "task.image_size=32", "task.generation.beam_size=2", "task.generation.max_len_b=4",
        "task.ptb_tokenizer=false", "callbacks.progress_bar.refresh_rate=1",
        "++callbacks.data_skips={_target_:ofa.callbacks.DataSkipLogger,every_n_steps:2}"])
    output = proc.stdout + proc.stderr

    # fit: one validation pass (exact) plus whatever the 4 resampled training batches met
    total, by_reason, by_split = summary_line(output, "fit")
    assert by_split["val"] == sum(PER_PASS.values()) and total == by_split["train"] + by_split["val"]
    assert all(by_reason.get(reason, 0) >= n for reason, n in PER_PASS.items()), by_reason
    # the test stage after fit reads every test shard once: its counts are exact
    total, by_reason, by_split = summary_line(output, "test")
    assert by_reason == PER_PASS and by_split == {"test": sum(PER_PASS.values())}

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/caption/cider", "test/caption/cider"} <= set(metrics)  # it trained and evaluated
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    logged = [r for r in rows if r.get("data/skipped/total")]
    assert logged and float(logged[-1]["data/skipped/total"]) == sum(PER_PASS.values())  # the test epoch's
    assert float(logged[-1]["data/skipped/preprocess_error"]) == 1
