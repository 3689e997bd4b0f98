"""ofa.modules.init: Fourier rows for the location tokens (from-scratch training)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ofa.modules.init import fourier_rows_


def test_fourier_rows_are_smooth_in_position_and_keep_the_norm_of_the_init() -> None:
    torch.manual_seed(0)
    w = torch.randn(1200, 128) * 0.02
    before = w.clone()
    fourier_rows_(w, 100, 1000, std=0.02)
    rows = w[100:1100]
    assert torch.equal(w[:100], before[:100]) and torch.equal(w[1100:], before[1100:])  # only the bins change
    torch.testing.assert_close(rows.norm(dim=1), torch.full((1000,), 0.02 * 128 ** 0.5), rtol=1e-5, atol=0)
    sim = F.cosine_similarity(rows[:, None], rows[None], dim=-1)  # (N, N)
    near = sim.diagonal(1).min()  # neighbouring bins
    far = sim[torch.arange(0, 1000, 97)][:, torch.arange(40, 1000, 89)].abs().median()
    assert near > 0.9, near  # bin i and i+1 start almost the same
    assert far < 0.2, far  # distant bins are close to orthogonal, as random rows are
    # the argmax of <row_p, row_q> over q is q = p: one hidden vector can point at any position
    assert torch.equal(sim.argmax(1), torch.arange(1000))


def test_odd_width_leaves_the_last_column_alone() -> None:
    w = torch.zeros(10, 7)
    fourier_rows_(w, 0, 10, std=0.02)
    assert w[:, :6].abs().sum() > 0 and torch.equal(w[:, 6], torch.zeros(10))
