"""Named buffers reused across the steps of one search instead of allocated afresh.

Under glibc's default allocator a fresh (rows, vocabulary) tensor (megabytes for V = 59457) is mmap'd and
page-faulted in every time: a 9.5 MB log-softmax output costs ~8 ms fresh and ~1.7 ms in a reused buffer
(experiments/README.md, "Channels-last training, generation without fresh buffers"). Rows only shrink during a
search, so a view of a buffer's first elements fits.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class Workspace:
    """One flat buffer per name, grown when a request does not fit; `get` returns a view of its start."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A `shape` tensor of `dtype` on `device`, backed by buffer `name` (its previous contents are stale)."""
        size = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self.buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)
