"""OFA multi-head attention: scale 1/sqrt(attn_scale_factor * head_dim), additive bias, per-head c_attn.

Also the bias builders that the encoder and the decoder share: the absolute-position bias and the key
padding mask (both additive, (B, H, Tq, Tk)-broadcastable).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.prompt import with_prefix


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, D) -> (B, H, T, D/H)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, hd)


def position_bias(q_linear: nn.Linear, k_linear: nn.Linear, q_pos: Tensor, k_pos: Tensor,
                  heads: int, scaling: float) -> Tensor:
    """OFA's absolute-position bias: per-head (q_linear(q_pos) * scaling) @ k_linear(k_pos)^T. (B,H,Tq,Tk)"""
    q = split_heads(q_linear(q_pos) * scaling, heads)  # (B, H, Tq, hd)
    return q @ split_heads(k_linear(k_pos), heads).transpose(2, 3)


def key_padding_bias(pad: Tensor, dtype: torch.dtype) -> Tensor | None:
    """Additive key mask (B, 1, 1, S) from `pad` (B, S) True = pad: -inf at padded keys; None when none is
    (under `torch.compile` the mask of zeros instead: no data-dependent branch to split the graph)."""
    if not torch.compiler.is_compiling() and not bool(pad.any()):
        return None
    return torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill_(pad, float("-inf"))[:, None, None]


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, dropout: float = 0.0) -> Tensor:
    """softmax(q k^T * scale + bias) v: q (B,H,T,hd), k/v (B,H,S,hd), bias broadcastable to (B,H,T,S).

    Without a gradient for the bias, PyTorch's fused SDPA kernel. With one (training: the bias holds
    learned position biases) SDPA can only use its math fallback, which spends several extra passes over
    the (B,H,T,S) scores; here the bias is the `beta` term of one batched GEMM instead. Rows whose keys
    are all masked are not supported (the callers always leave a key: the query itself, or text tokens).
    """
    if not (bias.requires_grad and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale, dropout_p=dropout)
    b, h, t, d = q.shape
    s = k.size(2)
    bias = bias.to(q.dtype).expand(b, h, t, s).reshape(b * h, t, s)  # a view when already (B,H,T,S)
    scores = torch.baddbmm(bias, q.reshape(b * h, t, d), k.reshape(b * h, s, d).transpose(1, 2), alpha=scale)
    probs = F.dropout(scores.softmax(-1), dropout)  # (B*H, T, S)
    return torch.bmm(probs, v.reshape(b * h, s, d)).view(b, h, t, d)


class MultiheadAttention(nn.Module):
    """Self- or cross-attention with an additive float bias (position biases + masks in one tensor).

    `cache` (a dict owned by the decoder cache) holds this module's keys/values between calls:
    self-attention appends the new positions' k/v; cross-attention (`kv` given) computes k/v from the
    encoder output once and reuses them (the decoder empties the dict when the encoder output changes).
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
        return split_heads(x, self.num_heads)  # (B, H, T, hd)

    def _keys_values(self, x: Tensor, kv: Tensor | None, cache: dict | None) -> tuple[Tensor, Tensor]:
        if kv is not None:  # cross-attention: static keys/values
            if cache is not None and "k" in cache:
                return cache["k"], cache["v"]
            k, v = self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))  # (B, H, S, hd)
            if cache is not None and torch.compiler.is_compiling():  # the layout of their `index_select`:
                k, v = k.contiguous(), v.contiguous()  # a shrinking batch recompiles for no new stride
        else:
            k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))  # (B, H, T, hd)
            if cache is not None and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        return k, v

    def forward(self, x: Tensor, bias: Tensor, kv: Tensor | None = None, cache: dict | None = None,
                prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (R,T,D); kv (B,S,D) for cross-attention else None; bias broadcastable to (B,H,G*T,S).

        R = B * G: with fewer key/value rows than query rows (beam search: one encoder row per
        sample), each key/value row serves G consecutive query rows and the bias is given in the
        folded layout of `fold_rows`. `prefix`: deep-prompt keys/values (1|B, H, P, hd) put in front of
        this layer's own (self-attention only; not cached; spec §8).
        """
        q = self._heads(self.q_proj(x))  # (R, H, T, hd)
        k, v = self._keys_values(x, kv, cache)  # (B, H, S, hd)
        if prefix is not None:
            k, v, bias = with_prefix(k, v, bias, prefix)  # (B, H, P+S, hd), (..., P+S)
        rows, _, t, _ = q.shape
        group = rows // k.size(0)
        out = attend(fold_rows(q, group), k, v, bias, self.scaling, self.dropout if self.training else 0.0)
        b, h, _, hd = out.shape  # (B, H, G*T, hd)
        out = out.view(b, h, group, t, hd).permute(0, 2, 3, 1, 4)  # (B, G, T, H, hd)
        if self.c_attn is not None:
            out = out * self.c_attn.to(out.dtype)[:, None]
        return self.out_proj(out.reshape(rows, t, self.embed_dim))  # (R, T, D)


def fold_rows(x: Tensor, group: int) -> Tensor:
    """(B*G, H, T, X) -> (B, H, G*T, X): the G consecutive rows of each group become one row's queries."""
    if group == 1:
        return x
    r, h, t, d = x.shape
    return x.view(r // group, group, h, t, d).transpose(1, 2).reshape(r // group, h, group * t, d)
