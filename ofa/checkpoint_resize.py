"""Fit a checkpoint's image-position weights to a model with another `image_bucket_size` (larger images).

OFA grows `embed_image_positions` on load by appending rows drawn from N(0, d^-0.5)
(`upgrade_state_dict_named` in `unify_transformer.py`); its fairseq loader would still refuse the relative
tables, whose size also follows the bucket. Here every learned entry keeps its meaning instead of its index:
- `*.embed_image_positions.weight` (bucket^2 + 1 rows, id `r * bucket + c + 1`): the row of grid cell (r, c)
  moves to that cell's new id; cells the checkpoint never had get OFA's N(0, d^-0.5) rows;
- `*.image_rel_pos_table_list.<i>.weight` ((2 * bucket - 1)^2 + 3 rows, one per 2-D offset plus three for
  the decoder's `<s>`): each offset keeps its row; offsets beyond the old span get N(0, init_std) rows
  (the model's own initialisation).
A smaller bucket keeps the cells and offsets that still exist. With `interpolate_position` the larger
grid's position embeddings are then interpolated from the pretraining grid at run time (`OFAEncoder`).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

POSITIONS = re.compile(r"^(encoder|decoder)\.embed_image_positions\.weight$")
REL_TABLE = re.compile(r"^(encoder|decoder)\.image_rel_pos_table_list\.\d+\.weight$")


def bucket_of_positions(rows: int) -> int:
    side = math.isqrt(rows - 1)
    if side * side + 1 != rows:
        raise ValueError(f"{rows} image position rows is not bucket^2 + 1")
    return side


def bucket_of_table(rows: int) -> int:
    span = math.isqrt(rows - 3)
    if span * span + 3 != rows or span % 2 == 0:
        raise ValueError(f"{rows} relative-table rows is not (2 * bucket - 1)^2 + 3")
    return (span + 1) // 2


def resize_positions(old: Tensor, bucket: int) -> Tensor:
    """(b0^2 + 1, D) -> (bucket^2 + 1, D): row 0 and each kept cell's row moved, new cells N(0, D^-0.5)."""
    b0, d = bucket_of_positions(old.size(0)), old.size(1)
    new = (torch.randn(bucket * bucket + 1, d) * d ** -0.5).to(old.dtype)
    new[0] = old[0]
    n = min(b0, bucket)
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    new[(rows * bucket + cols + 1).flatten()] = old[(rows * b0 + cols + 1).flatten()]
    return new


def resize_rel_table(old: Tensor, bucket: int, init_std: float) -> Tensor:
    """((2 b0 - 1)^2 + 3, H) -> ((2 bucket - 1)^2 + 3, H): each 2-D offset and the 3 `<s>` rows kept."""
    b0, heads = bucket_of_table(old.size(0)), old.size(1)
    span0, span = 2 * b0 - 1, 2 * bucket - 1
    new = (torch.randn(span * span + 3, heads) * init_std).to(old.dtype)
    new[-3:] = old[-3:]
    n = min(b0, bucket)
    off = torch.arange(-(n - 1), n)
    dr, dc = torch.meshgrid(off, off, indexing="ij")
    new[((dr + bucket - 1) * span + dc + bucket - 1).flatten()] = old[((dr + b0 - 1) * span0 + dc + b0 - 1).flatten()]
    return new


def fit_image_positions(sd: dict[str, Tensor], bucket: int, init_std: float) -> tuple[dict[str, Tensor], int | None]:
    """`sd` with its image-position weights fitted to `bucket`, and the checkpoint's bucket (None = same)."""
    out, held = dict(sd), None
    for key, value in sd.items():
        if POSITIONS.match(key) and value.size(0) != bucket * bucket + 1:
            out[key], held = resize_positions(value, bucket), bucket_of_positions(value.size(0))
        elif REL_TABLE.match(key) and value.size(0) != (2 * bucket - 1) ** 2 + 3:
            out[key], held = resize_rel_table(value, bucket, init_std), bucket_of_table(value.size(0))
    return out, held
