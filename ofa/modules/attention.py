"""OFA multi-head attention: scale 1/sqrt(attn_scale_factor * head_dim), additive bias, per-head c_attn."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MultiheadAttention(nn.Module):
    """Self- or cross-attention with an additive float bias (position biases + masks in one tensor).

    `cache` (a dict owned by the decoder cache) holds this module's keys/values between calls:
    self-attention appends the new positions' k/v; cross-attention (`static_kv=True`) computes k/v from
    the encoder output once and reuses them.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0,
                 scale_factor: float = 2.0, scale_heads: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = (self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def _keys_values(self, x: Tensor, kv: Tensor | None, cache: dict | None) -> tuple[Tensor, Tensor]:
        if kv is not None:  # cross-attention: static keys/values
            if cache is not None and "k" in cache:
                return cache["k"], cache["v"]
            k, v = self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))  # (B, H, S, hd)
        else:
            k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))  # (B, H, T, hd)
            if cache is not None and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        return k, v

    def forward(self, x: Tensor, bias: Tensor, kv: Tensor | None = None, cache: dict | None = None) -> Tensor:
        """x (B,T,D); kv (B,S,D) for cross-attention else None; bias broadcastable to (B,H,T,S)."""
        q = self._heads(self.q_proj(x))  # (B, H, T, hd)
        k, v = self._keys_values(x, kv, cache)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), scale=self.scaling,
            dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        if self.c_attn is not None:
            out = out * self.c_attn.to(out.dtype)[:, None, None]
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.embed_dim))  # (B, T, D)
