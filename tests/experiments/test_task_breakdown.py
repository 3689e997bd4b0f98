"""experiments/task_breakdown.py and grounding_precision.py: every text the synthetic world writes falls into one
named type, and an oracle box scores what it should."""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import grounding_precision  # noqa: E402
import task_breakdown  # noqa: E402

from ofa.datamodules.synthetic_world import annotate, sample_scene


def world(n: int = 300, side: int = 256) -> list[dict]:
    rng = random.Random(0)
    return [{**annotate(rng, sample_scene(rng, side)), "width": side} for _ in range(n)]


def test_every_question_hypothesis_and_expression_has_its_type() -> None:
    records = world()
    kinds = {
        "vqa": {task_breakdown.kind(q["question"], task_breakdown.VQA_TYPES) for r in records for q in r["vqa"]},
        "nli": {task_breakdown.kind(e["hypothesis"], task_breakdown.NLI_TYPES) for r in records for e in r["entailment"]},
        "ref": {task_breakdown.kind(x["text"], task_breakdown.REF_TYPES) for r in records for x in r["refs"]},
    }
    assert kinds["vqa"] == {name for name, _ in task_breakdown.VQA_TYPES}
    assert kinds["nli"] == {name for name, _ in task_breakdown.NLI_TYPES}
    assert kinds["ref"] == {name for name, _ in task_breakdown.REF_TYPES}
    assert task_breakdown.kind("is there a red circle?", task_breakdown.VQA_TYPES) == "exists"
    assert task_breakdown.kind("the red circle is above the blue square", task_breakdown.NLI_TYPES) == "relation"


def test_oracle_boxes_score_by_their_precision() -> None:
    records = world()
    exact = grounding_precision.accuracy(records, lambda obj, side: obj["box"])
    fine, coarse = (grounding_precision.accuracy(records, grounding_precision.grid_box(k)) for k in (32, 4))
    cell = grounding_precision.accuracy(records, grounding_precision.cell_box)
    assert exact == 1.0 and fine == 1.0
    assert coarse < cell < 0.8  # a 4x4 grid is coarser than the world's 3x3 cells plus the true size
