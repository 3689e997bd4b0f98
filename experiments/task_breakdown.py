"""Where do a trained run's VQA, SNLI-VE and grounding scores come from? Scores the test split of a run (its best
checkpoint) per question type, hypothesis type and referring-expression form of the synthetic world
(ofa/datamodules/synthetic_world.py), with the true images and with each batch's images rolled by one.

    .venv/bin/python experiments/task_breakdown.py outputs/<run_name>/<time> [--ckpt best|last]

A type whose score does not drop with rolled images is answered from the text (or not at all).
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

from ofa.tasks.metrics_understanding import grounding_hits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shuffled_image_control import load_run, load_trained  # noqa: E402

VQA_TYPES = [("count all", r"^how many shapes"), ("count shape", r"^how many \w+s are"), ("colour", r"^what color"),
             ("shape", r"^what shape"), ("size", r"small or large"), ("location", r"^where is"),
             ("exists", r"^is there"), ("relation", r"^is the .* (left|right|above|below)")]
NLI_TYPES = [("exists", r"^there is an? "), ("count", r"^there (is|are) (zero|one|two|three)"),
             ("material/property", r"made of|is (heavy|soft|expensive|wet)$"), ("relation", r"(left|right|above|below)")]
REF_TYPES = [("at location", r" at the "), ("colour object", r" object$"), ("size shape", r"(small|large) shape$"),
             ("size name", r"^the (small|large) \w+ \w+$"), ("shape only", r"^the \w+$"), ("name", r"^the \w+ \w+$")]


def kind(text: str, types: list[tuple[str, str]]) -> str:
    return next((name for name, pattern in types if re.search(pattern, text)), "other")


def scores(tasks, model, dm, roll: bool) -> dict[str, dict[str, list[float]]]:  # noqa: ANN001
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    names = dm.eval_task_names("test")
    with torch.no_grad():
        for task_name in ("vqa", "snli_ve", "grounding"):
            if task_name not in names:
                continue
            task = tasks[task_name]
            for batch in dm.test_dataloader()[names.index(task_name)]:
                if roll:
                    batch = {**batch, "patch_images": batch["patch_images"].roll(1, 0)}
                if task_name == "grounding":
                    gt = torch.tensor([m["box"] for m in batch["meta"]], dtype=torch.float64)
                    hits = grounding_hits(task.predict_boxes(model, batch), gt).tolist()  # the metric's own rule
                    for m, hit in zip(batch["meta"], hits):
                        out[task_name][kind(m["text"], REF_TYPES)].append(float(hit))
                    continue
                for pred, m in zip(task.predict(model, batch), batch["meta"]):
                    if task_name == "vqa":
                        out[task_name][kind(m["question"], VQA_TYPES)].append(min(1.0, m["answers"].get(pred, 0.0)))
                    else:
                        out[task_name][kind(m["hypothesis"], NLI_TYPES)].append(float(pred == m["answer"]))
    return out


def main(argv: list[str] | None = None) -> None:
    cfg, ckpt = load_run(argv, __doc__.split("\n")[0], "best")
    tasks, model, dm = load_trained(cfg, ckpt)
    true, rolled = scores(tasks, model, dm, roll=False), scores(tasks, model, dm, roll=True)
    print(f"{ckpt}\n| task | type | n | true images | rolled images |\n|---|---|---|---|---|")
    for task_name, by_type in true.items():
        for t, vals in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
            r = rolled[task_name][t]
            print(f"| {task_name} | {t} | {len(vals)} | {sum(vals) / len(vals):.3f} | {sum(r) / len(r):.3f} |")


if __name__ == "__main__":
    main()
