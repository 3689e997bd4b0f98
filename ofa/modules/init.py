"""Initialisations for training from scratch that OFA's own init (N(0, init_std) everywhere) does not have.

`fourier_rows_`: the `<bin_i>` location tokens as points on a line. With OFA's random rows, the tied output
projection scores bin 417 and bin 418 independently, so a model trained from scratch learns each of the 1000
bins from its own few examples and, on small data, predicts the box prior (experiments/README.md, "Learning
to see" (6)). Rows of sines and cosines of the bin's position make the logits a smooth function of it:
nearby bins start similar, and one hidden vector can peak at any position (h . e_b = sum_k cos(2 pi f_k (p_b - p))).
Official checkpoints overwrite the rows, so this matters only from scratch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def fourier_rows_(weight: Tensor, start: int, count: int, std: float, max_cycles: float = 64.0) -> Tensor:
    """Rows `start .. start+count-1` of `weight` (V, D) <- Fourier features of p = i / (count - 1) in [0, 1].

    D/2 frequencies f_k spaced geometrically from 0.5 to `max_cycles` cycles over [0, 1]; columns
    [cos(2 pi f_k p), sin(2 pi f_k p)] interleaved, scaled so each row has the norm of an N(0, std) row
    (std * sqrt(D)). An odd D leaves its last column N(0, std).
    """
    d = weight.shape[1]
    k = d // 2
    p = torch.arange(count, dtype=torch.float64) / max(count - 1, 1)  # (N,)
    freqs = torch.logspace(math.log10(0.5), math.log10(max_cycles), k, dtype=torch.float64)  # (K,)
    angle = 2 * math.pi * p[:, None] * freqs[None]  # (N, K)
    rows = torch.stack([angle.cos(), angle.sin()], -1).flatten(1)  # (N, 2K): K unit pairs, row norm sqrt(K)
    rows = rows * std * math.sqrt(d / k)  # row norm std * sqrt(D)
    weight[start:start + count, : 2 * k] = rows.to(weight)
    return weight
