"""Relative-position buckets, their per-layer bias tables and image position ids (spec §1.4 and §1.7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def token_bucket_table(bucket_size: int, max_position: int, log_position: int = 1024) -> Tensor:
    """1-D log-bucket table indexed by `query - key + max_position - 1`; values in [0, 2*bucket-2].

    `table[i - j + max_position - 1]` equals fairseq's `token_rp_bucket[i, j]` (a function of i - j).
    fairseq always scales the log buckets by its default 1024 positions (`log_position`); distances
    beyond that (only with max_position > 1024) share the outermost buckets.
    """
    rel = torch.arange(-(max_position - 1), max_position, dtype=torch.long, device="cpu")  # (2M-1,)
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((log_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_pos.le(mid), rel, log_pos.int() * sign)
    return (bucket + bucket_size - 1).clamp(0, 2 * bucket_size - 2)


def token_buckets(table: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Bucket ids (Tq, Tk) for query positions `q_pos` (Tq,) and key positions `k_pos` (Tk,).

    Distances of `max_position` or more (only image-code targets get there: OFA's 1024 codes + `</s>` with
    max_target_positions 1024) take the last bucket; those rows use the image buckets instead anyway."""
    max_position = (table.numel() + 1) // 2
    index = q_pos[:, None] - k_pos[None, :] + max_position - 1  # (Tq, Tk)
    return table[index.clamp(0, table.numel() - 1)]


def image_buckets(q_ids: Tensor, k_ids: Tensor, bucket_size: int) -> Tensor:
    """2-D relative bucket ids (..., Tq, Tk) for image position ids (..., Tq) x (..., Tk).

    Id `r * bucket_size + c + 1` is grid cell (r, c); id 0 is a special position (the decoder's `<s>`)
    with its own row / column / corner buckets, as fairseq's `image_rp_bucket`.
    """
    span = 2 * bucket_size - 1
    num_rel = span * span + 3
    q, k = q_ids[..., :, None], k_ids[..., None, :]
    qr, qc = (q - 1).div(bucket_size, rounding_mode="floor"), (q - 1) % bucket_size
    kr, kc = (k - 1).div(bucket_size, rounding_mode="floor"), (k - 1) % bucket_size
    idx = (qr - kr + bucket_size - 1) * span + (qc - kc + bucket_size - 1)  # (..., Tq, Tk)
    idx = torch.where(q == 0, num_rel - 3, idx)
    idx = torch.where(k == 0, num_rel - 2, idx)
    return torch.where((q == 0) & (k == 0), num_rel - 1, idx)


def image_bucket_table(bucket_size: int) -> Tensor:
    """Fairseq's full (bucket^2+1, bucket^2+1) `image_rp_bucket` (for tests and export only)."""
    ids = torch.arange(bucket_size * bucket_size + 1, device="cpu")
    return image_buckets(ids, ids, bucket_size)


def encoder_image_position_ids(h: int, w: int, bucket_size: int, device: torch.device | None = None) -> Tensor:
    """Ids of an h x w patch grid in raster order: `r * bucket_size + c + 1`. (h*w,)"""
    rows = torch.arange(h, device=device)[:, None] * bucket_size
    return (rows + torch.arange(w, device=device)[None, :] + 1).flatten()


def decoder_image_position_idx(code_image_size: int, bucket_size: int) -> Tensor:
    """Decoder ids for image-code targets: `[0] + grid(w x w) + [1024] * 769` with w = code_image_size // 8."""
    w = code_image_size // 8
    cpu = torch.device("cpu")
    grid = encoder_image_position_ids(w, w, bucket_size, device=cpu)
    head, tail = torch.zeros(1, dtype=torch.long, device=cpu), torch.full((769,), 1024, device=cpu)
    return torch.cat([head, grid, tail])


def rel_pos_tables(n_layers: int, num_buckets: int, heads: int) -> nn.ModuleList:
    """One learned (num_buckets, heads) relative-bias table per layer (fairseq's `*_rel_pos_table_list`)."""
    return nn.ModuleList(nn.Embedding(num_buckets, heads) for _ in range(n_layers))
