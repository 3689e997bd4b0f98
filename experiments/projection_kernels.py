"""Which form of the generator's output projection is faster on this CPU? Times the cached decoding step's two
float32 products of R rows (R, D) with the tied 59457 x 256 embedding, each into reused buffers:
`x @ W^T` (straight into the logits) and `(W @ x^T)^T` (into a (V, R) buffer, then copied into the logits), which
`ofa.modules.decoder.flipped_projection_pays` picks for at most 8 rows.

    .venv/bin/python experiments/projection_kernels.py [--rows 1 8 12 40] [--threads 2] [--reps 15]

Prints the median milliseconds per product and the largest difference from a float64 product.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import timed  # noqa: E402  (one warm-up call, then the timed calls)


def median_ms(fn, reps: int) -> float:
    return statistics.median(timed(fn, reps)[0]) * 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 12, 40])
    p.add_argument("--vocab", type=int, default=59457)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    weight = torch.randn(args.vocab, args.dim, generator=torch.Generator().manual_seed(0)) * 0.02  # (V, D)
    print(f"| rows | x @ W^T, ms | (W @ x^T)^T + copy, ms | ratio | max error vs float64 (straight / flipped) |\n"
          f"|---|---|---|---|---|")
    for rows in args.rows:
        x = torch.randn(rows, args.dim, generator=torch.Generator().manual_seed(rows))  # (R, D)
        out, flipped = torch.empty(rows, args.vocab), torch.empty(args.vocab, rows)

        def straight() -> torch.Tensor:
            return torch.mm(x, weight.t(), out=out)

        def flip() -> torch.Tensor:
            torch.mm(weight, x.t(), out=flipped)
            return out.copy_(flipped.t())

        exact = x.double() @ weight.double().t()
        errors = [(fn().double() - exact).abs().max().item() for fn in (straight, flip)]
        a, b = median_ms(straight, args.reps), median_ms(flip, args.reps)
        print(f"| {rows} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {errors[0]:.1e} / {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
