"""Deep prompts (prefix tuning, spec §8): learned key/value prefixes for every self-attention layer.

OFA's `PromptEncoder` ("prefix" type): the ids `0..P-1` index an embedding of width `layers * 2 * D`
(or of width D followed by Linear(D, dim) -> ReLU -> Linear(dim, layers * 2 * D) with `projection`); the
output is viewed as one (key, value) pair of shape (rows, H, P, hd) per layer, with dropout 0.2 in OFA.
The attention layers put them in front of their own keys/values (`MultiheadAttention`, `prefix=`), with
no position bias and visible to every query.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PromptEncoder(nn.Module):
    """`length` prefix key/values for each of `layers` self-attention layers (fairseq names: embedding, trans)."""

    def __init__(self, length: int, layers: int, d_model: int, heads: int, projection: bool = False,
                 proj_dim: int = 0, dropout: float = 0.2) -> None:
        super().__init__()
        self.length, self.layers, self.heads, self.dropout = length, layers, heads, dropout
        self.head_dim = d_model // heads
        width = layers * 2 * d_model
        if projection:
            proj_dim = proj_dim or 2 * d_model  # OFA's --*-prompt-dim default
            self.embedding = nn.Embedding(length, d_model)
            self.trans = nn.Sequential(nn.Linear(d_model, proj_dim), nn.ReLU(), nn.Linear(proj_dim, width))
        else:
            self.embedding = nn.Embedding(length, width)
            self.trans = None

    def forward(self, rows: int) -> list[tuple[Tensor, Tensor]]:
        """One (key, value) pair per layer, each (rows, H, P, hd); (1, H, P, hd) views when not training."""
        ids = torch.arange(self.length, device=self.embedding.weight.device)
        x = self.embedding(ids)  # (P, L*2*D) or (P, D)
        if self.trans is not None:
            x = self.trans(x)  # (P, L*2*D)
        x = x.view(1, self.length, 2 * self.layers, self.heads, self.head_dim)  # (1, P, 2L, H, hd)
        if self.training and self.dropout > 0:  # a mask per sample, as OFA drops out a (B, ...) tensor
            x = F.dropout(x.expand(rows, -1, -1, -1, -1), self.dropout, True)
        kv = x.permute(2, 0, 3, 1, 4)  # (2L, 1|rows, H, P, hd)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.layers)]


def with_prefix(k: Tensor, v: Tensor, bias: Tensor, prefix: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Prefix keys/values in front of `k`, `v` (B, H, S, hd) and zero (visible, no position) bias columns in
    front of `bias` (..., T, S)."""
    pk, pv = prefix  # (1|B, H, P, hd)
    rows = k.size(0)
    k = torch.cat([pk.to(k.dtype).expand(rows, -1, -1, -1), k], dim=2)  # (B, H, P+S, hd)
    v = torch.cat([pv.to(v.dtype).expand(rows, -1, -1, -1), v], dim=2)
    return k, v, F.pad(bias, (pk.size(2), 0))  # (..., T, P+S)
