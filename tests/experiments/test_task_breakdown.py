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


def test_coordinate_scores_count_nll_and_near_hits() -> None:
    """experiments/grounding_coordinates.py: per coordinate, the target's NLL summed over samples and the argmax
    bins within `tol` of the target."""
    import torch

    import grounding_coordinates

    logits = torch.full((2, 4, 100), -10.0)
    target = torch.tensor([[10, 20, 30, 40], [50, 60, 70, 80]])
    for b in range(2):
        for c in range(4):
            logits[b, c, target[b, c] + (3 if c == 0 else 0)] = 10.0  # x0 off by 3 bins, the rest exact
    nll, hits = grounding_coordinates.coordinate_scores(logits, target, tol=2)
    assert hits.tolist() == [0.0, 2.0, 2.0, 2.0]
    assert nll[0] > 30 and bool((nll[1:] < 1e-3).all())  # x0's target has logit -10 against a peak of 10
    _, hits = grounding_coordinates.coordinate_scores(logits, target, tol=3)
    assert hits.tolist() == [2.0, 2.0, 2.0, 2.0]
