"""The synthetic world's text side (`ofa.datamodules.synthetic_text`): same bytes for the same config, one
folder per text task in the converted-TSV schema, labels that follow from the texts, single-token answers,
and regeneration when the config changes."""
from __future__ import annotations

import collections
import json
import tarfile
from pathlib import Path

import pytest

from ofa.datamodules import synthetic_text as st
from ofa.tasks import TASKS
from ofa.tokenizer import build_tokenizer

SMALL = dict(num_train=40, num_val=8, num_test=8, vocab_size=600)


def records(folder: Path, split: str = "train") -> list[dict]:
    with tarfile.open(folder / f"{split}-000000.tar") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return st.ensure_synthetic_text(tmp_path_factory.mktemp("text") / "text", **SMALL)


def test_same_config_same_bytes_and_a_new_config_regenerates(text_dir: Path, tmp_path: Path) -> None:
    other = st.ensure_synthetic_text(tmp_path / "b", **SMALL)
    for task in st.TEXT_TASKS:
        for name in ("train-000000.tar", "val-000000.tar", "tokenizer.json"):
            assert (text_dir / task / name).read_bytes() == (other / task / name).read_bytes()
    again = st.ensure_synthetic_text(tmp_path / "b", **{**SMALL, "seed": 1})
    assert json.loads((again / "summary.json").read_text())["config"]["seed"] == 1
    assert (again / "cola" / "train-000000.tar").read_bytes() != (text_dir / "cola" / "train-000000.tar").read_bytes()


def test_every_task_folder_feeds_its_task(text_dir: Path) -> None:
    tokenizer = build_tokenizer("trained", text_dir / "cola")
    for name in st.TEXT_TASKS:
        rows = records(text_dir / name)
        assert len(rows) == SMALL["num_train"] and len(records(text_dir / name, "test")) == SMALL["num_test"]
        task = TASKS[name](tokenizer, TASKS[name].config_class())  # GLUE: raises unless answers are 1 token
        assert all(task.preprocess(r, "train") is not None for r in rows)


def test_labels_are_balanced_and_follow_from_the_text() -> None:
    cfg = st.SyntheticTextConfig()
    for name, words in [("cola", {"yes", "no"}), ("sst2", {"positive", "negative"}), ("mnli", {"yes", "no", "maybe"}),
                        ("qnli", {"yes", "no"}), ("mrpc", {"yes", "no"}), ("qqp", {"yes", "no"})]:
        counts = collections.Counter(st.make_record(cfg, name, "train", i)["label"] for i in range(600))
        assert set(counts) == words and min(counts.values()) > 600 / len(words) * 0.8, (name, counts)
    for i in range(300):
        r = st.make_record(cfg, "sst2", "train", i)
        negated = " not " in r["text"]
        good = any(w in r["text"].split() for w in st.GOOD + st.LIKE)
        assert (r["label"] == "positive") == (good != negated)
        r = st.make_record(cfg, "qnli", "train", i)
        subject = r["text"].split("the ", 1)[1].split(" small")[0].rstrip("?")
        assert (r["label"] == "yes") == (f"{subject} at the" in r["text_b"])
        r = st.make_record(cfg, "gigaword", "train", i)
        for phrase in r["summary"].replace(" with ", ", ").replace(" and ", ", ").split(", "):
            name_ = " ".join(phrase.split()[-2:]) if " at the " not in phrase else phrase.split(" at the ")[0]
            assert name_.split()[-1] in r["text"]


def test_cola_negatives_are_corrupted_positives() -> None:
    rng = st.random.Random(0)
    for sentence in ["the red circle is small", "a blue square is at the top left"]:
        for _ in range(20):
            bad = st.corrupt(rng, sentence)
            assert bad != sentence and set(bad.split()) <= set(sentence.split()) | {"are"}


def test_the_image_world_carries_the_text_world(synthetic_data_dir: Path) -> None:
    summary = json.loads((synthetic_data_dir / "text" / "summary.json").read_text())
    assert summary["tasks"] == list(st.TEXT_TASKS) and summary["config"]["num_train"] == 48


def _ensure_small(out: str) -> str:
    return str(st.ensure_synthetic_text(out, **{**SMALL, "num_train": 8, "num_val": 2, "num_test": 2}))


def test_concurrent_ensure_calls_agree(tmp_path: Path) -> None:
    """DDP ranks generate at once: the first rename wins, the others keep it (no error, no leftovers)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(3) as pool:
        for attempt in range(6):
            outs = pool.map(_ensure_small, [str(tmp_path / f"race{attempt}")] * 3)
            assert len(set(outs)) == 1 and (Path(outs[0]) / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"race{i}" for i in range(6)]
