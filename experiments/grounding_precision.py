"""How precisely must a box be placed to pass Acc@0.5 on the synthetic world? Scores oracle boxes on the test split:
the referent's true size, centred on its 3x3 grid cell, or its true centre rounded to a k x k grid.

    .venv/bin/python experiments/grounding_precision.py [--data-dir data/synthetic] [--split test]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from baselines import ROOT, read_records  # experiments/ is on sys.path when run as a script
from ofa.datamodules.synthetic_world import SIZES
from ofa.tasks.metrics_understanding import GroundingAccuracy


def accuracy(records: list[dict], box_of) -> float:  # noqa: ANN001
    """Acc@0.5 of `box_of(object, side)` for each record's first referring expression (the one evaluation reads)."""
    preds, gts = [], []
    for r in records:
        ref = r["refs"][0]
        obj = next(o for o in r["objects"] if o["box"] == ref["box"])
        preds.append(box_of(obj, r["width"]))
        gts.append(ref["box"])
    metric = GroundingAccuracy()
    metric.update(torch.tensor(preds, dtype=torch.float64), torch.tensor(gts, dtype=torch.float64))
    return float(metric.compute())


def centred(cx: float, cy: float, half: float) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half]


def cell_box(obj: dict, side: int) -> list[float]:
    x0, y0, x1, y1 = obj["box"]
    cell = side / 3
    col, row = ((x0 + x1) / 2) // cell, ((y0 + y1) / 2) // cell
    return centred((col + 0.5) * cell, (row + 0.5) * cell, max(2, round(SIZES[obj["size"]] * side)))


def grid_box(k: int):  # noqa: ANN201
    def box(obj: dict, side: int) -> list[float]:
        x0, y0, x1, y1 = obj["box"]
        step = side / k
        return centred(((x0 + x1) / 2 // step + 0.5) * step, ((y0 + y1) / 2 // step + 0.5) * step, (x1 - x0) / 2)
    return box


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "synthetic")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    records = read_records(args.data_dir, args.split)
    print(f"| oracle box ({len(records)} {args.split} images) | Acc@0.5 |\n|---|---|")
    print(f"| true size, centred on its 3x3 cell | {accuracy(records, cell_box):.3f} |")
    for k in (4, 8, 16, 32):
        print(f"| true size, centre rounded to a {k}x{k} grid | {accuracy(records, grid_box(k)):.3f} |")


if __name__ == "__main__":
    main()
