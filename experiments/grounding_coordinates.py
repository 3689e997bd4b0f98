"""Which of a grounding model's four box coordinates has it learned? Teacher-forced on a run's test split: the mean
negative log-likelihood of each target bin (x0, y0, x1, y1) over the bin tokens and how often the argmax bin is within
`--tol` bins of it (16 bins = 1 pixel at 64 px with 1000 bins).

    .venv/bin/python experiments/grounding_coordinates.py outputs/<run_name>/<time> [--ckpt best|last] [--tol 16]

A model that learns only the box prior predicts x1 / y1 well *given* x0 / y0 (the size follows) while its x0 stays
broad: experiments/README.md, "Learning to see" (6) and (7).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shuffled_image_control import load_run, load_trained  # noqa: E402

NUM_COORDS = 4


def coordinate_scores(bin_logits: Tensor, target_bins: Tensor, tol: int) -> tuple[Tensor, Tensor]:
    """bin_logits (B, 4, num_bins), target_bins (B, 4) in [0, num_bins) -> summed NLL (4,) and within-`tol` hits (4,)."""
    lp = bin_logits.float().log_softmax(-1)
    nll = -lp.gather(2, target_bins[..., None]).squeeze(-1).sum(0)
    hits = ((lp.argmax(-1) - target_bins).abs() <= tol).float().sum(0)
    return nll, hits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--ckpt", default="best")
    p.add_argument("--tol", type=int, default=16)
    args = p.parse_args()
    cfg, ckpt = load_run([args.run_dir], "grounding_coordinates", args.ckpt)
    tasks, model, dm = load_trained(cfg, ckpt)
    task, names = tasks["grounding"], dm.eval_task_names("test")
    nll, hits, n = torch.zeros(NUM_COORDS), torch.zeros(NUM_COORDS), 0
    for batch in dm.test_dataloader()[names.index("grounding")]:
        with torch.no_grad():
            logits = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])
        off = task.bin_offset
        got = coordinate_scores(logits[:, :NUM_COORDS, off:off + task.num_bins], batch["target"][:, :NUM_COORDS] - off,
                                args.tol)
        nll, hits, n = nll + got[0], hits + got[1], n + batch["target"].size(0)
    print(f"{n} test samples, {args.ckpt} checkpoint")
    print("coordinate   NLL   argmax within", args.tol, "bins")
    for name, a, b in zip(("x0", "y0", "x1", "y1"), (nll / n).tolist(), (hits / n).tolist()):
        print(f"{name:10s} {a:5.2f}   {b:.3f}")


if __name__ == "__main__":
    main()
