"""Adapters (spec §8): a bottleneck `x + up(ReLU(down(x)))` after each layer's FFN (OFA's `Adapter_Layer`,
scale 1.0, BERT-style N(0, init_std) init from `OFAModel.reset_parameters`), before the block residual."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class Adapter(nn.Module):
    """fairseq names: `down_proj`, `up_proj`."""

    def __init__(self, d_model: int, dim: int) -> None:
        super().__init__()
        self.down_proj = nn.Linear(d_model, dim)
        self.up_proj = nn.Linear(dim, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up_proj(F.relu(self.down_proj(x)))  # (B, T, D)
