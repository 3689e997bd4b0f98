"""Which form of the generator's output projection is faster on this CPU? Times the cached decoding step's four
float32 products of R rows (R, D) with the tied 59457 x 256 embedding, each ending in the step's reused logits
buffer: `x @ W^T` (straight into it), `(W @ x^T)^T` (into a (V, R) buffer, then copied), oneDNN's linear
(`torch.ops.mkldnn._linear_pointwise`, then copied) and the same with oneDNN's blocked copy of the weight
(`ofa.modules.decoder.packed_weight`, made once); `ofa.modules.decoder.projection_form` says which one the
generator uses for R rows.

    .venv/bin/python experiments/projection_kernels.py [--rows 1 8 12 40] [--threads 2] [--reps 15]

Prints the median milliseconds per product and the largest difference from a float64 product.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from ofa.modules.decoder import ONEDNN_LINEAR, PACKED_LINEAR, onednn_linear, packed_weight, projection_form

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
    print("| rows | x @ W^T, ms | (W @ x^T)^T + copy, ms | oneDNN linear + copy, ms | packed oneDNN linear + copy, ms "
          "| generator's form | max error vs float64 (straight / flipped / oneDNN / packed) |\n|---|---|---|---|---|---|---|")
    for rows in args.rows:
        x = torch.randn(rows, args.dim, generator=torch.Generator().manual_seed(rows))  # (R, D)
        out, flipped = torch.empty(rows, args.vocab), torch.empty(args.vocab, rows)

        def straight() -> torch.Tensor:
            return torch.mm(x, weight.t(), out=out)

        def flip() -> torch.Tensor:
            torch.mm(weight, x.t(), out=flipped)
            return out.copy_(flipped.t())

        def onednn() -> torch.Tensor:
            return out.copy_(onednn_linear(x, weight))

        def packed() -> torch.Tensor:
            return out.copy_(onednn_linear(x, packed_weight(weight)))

        forms = [straight, flip] + ([onednn] if ONEDNN_LINEAR else []) + ([packed] if PACKED_LINEAR else [])
        exact = x.double() @ weight.double().t()
        errors = [f"{(fn().double() - exact).abs().max().item():.1e}" for fn in forms]
        times = [f"{median_ms(fn, args.reps):.2f}" for fn in forms] + ["-"] * (4 - len(forms))
        print(f"| {rows} | {' | '.join(times)} | {projection_form(x)} | {' / '.join(errors)} |")


if __name__ == "__main__":
    main()
