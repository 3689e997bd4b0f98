"""`ensure_synthetic_judges`: the judge and scorer trained once on the text-to-image world's training images,
saved where the image_gen task loads them, their real-test accuracy recorded, reused when already there."""
from __future__ import annotations

import json
from pathlib import Path

from ofa.datamodules.synthetic_judges import JudgeRecipe, ensure_synthetic_judges
from ofa.tasks.image_judge import ImageJudge
from ofa.tasks.image_scorers import SyntheticClipScorer

QUICK = JudgeRecipe(judge_steps=5, scorer_steps=5, judge_batch_size=8, scorer_batch_size=8)


def test_trained_once_saved_and_reused(synthetic_data_dir: Path) -> None:
    judge_dir, scorer_dir = ensure_synthetic_judges(synthetic_data_dir, QUICK)
    assert judge_dir == synthetic_data_dir / "image_gen" / "judges" / "judge"
    assert isinstance(ImageJudge.load(judge_dir), ImageJudge)
    assert isinstance(SyntheticClipScorer.load(scorer_dir), SyntheticClipScorer)
    summary = json.loads((judge_dir.parent / "summary.json").read_text())
    assert set(summary["real_test"]) == {"color", "shape", "cell", "size", "all"}
    stamp = (judge_dir.parent / "summary.json").stat().st_mtime_ns
    assert ensure_synthetic_judges(synthetic_data_dir, QUICK) == (judge_dir, scorer_dir)
    assert (judge_dir.parent / "summary.json").stat().st_mtime_ns == stamp  # not retrained
