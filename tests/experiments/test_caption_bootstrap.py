"""experiments/caption_bootstrap.py: per-image CIDEr-D that averages to the platform's corpus score, and the paired
bootstrap of differences (the decoding itself is `ofa.api`'s, checked against a run's own test score in
experiments/README.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import caption_bootstrap  # noqa: E402

from ofa.tasks.metrics import coco_caption_scores

REFS = {"1": ["a red square", "one red square on the left"], "2": ["two blue circles", "a blue circle"],
        "3": ["a green triangle", "a small green triangle"], "4": ["an orange square", "orange square"]}


def rows(hyps: list[str]) -> list[dict]:
    return [{"id": i, "prediction": h, "references": REFS[i]} for i, h in zip(REFS, hyps, strict=True)]


def test_per_image_cider_averages_to_the_corpus_score() -> None:
    hyps = ["a red square", "a blue square", "a green triangle", "a square"]
    scores = caption_bootstrap.per_image_cider(rows(hyps))
    corpus = coco_caption_scores(dict(zip(REFS, hyps, strict=True)), REFS, meteor=False)["cider"]
    assert scores.shape == (4,) and scores.mean() == pytest.approx(corpus)
    assert scores[0] > scores[1]  # the exact caption beats the wrong shape


def test_paired_bootstrap_differences() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 2, 500)
    out = caption_bootstrap.paired_bootstrap({"base": base, "same": base.copy(), "up": base + 0.1}, resamples=200)
    assert out["same"]["diff_ci95"] == [0.0, 0.0] and out["same"]["p_not_above"] == 1.0
    assert out["up"]["diff"] == pytest.approx(0.1) and out["up"]["diff_ci95"] == pytest.approx([0.1, 0.1])
    assert out["up"]["p_not_above"] == 0.0
    lo, hi = out["base"]["ci95"]
    assert lo < base.mean() < hi and hi - lo == pytest.approx(4 * base.std() / np.sqrt(500), rel=0.3)
    with pytest.raises(ValueError, match="different numbers of images"):
        caption_bootstrap.paired_bootstrap({"a": base, "b": base[:10]})


def test_main_rescores_saved_predictions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Predictions already in `<out>/<label>.jsonl` are scored again, not decoded (the paths are never read)."""
    for label, hyps in {"base": ["a square"] * 4, "better": ["a red square", "two blue circles",
                                                             "a green triangle", "an orange square"]}.items():
        (tmp_path / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(hyps)))
    summary = caption_bootstrap.main(["base=/nowhere.ckpt", "better=/nowhere.ckpt", "--shards", "/nowhere/*.tar",
                                      "--out", str(tmp_path), "--resamples", "100"])
    assert summary["better"]["diff"] > 0 and json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "better: CIDEr-D" in capsys.readouterr().out
