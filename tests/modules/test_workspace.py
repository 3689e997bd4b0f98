"""ofa/modules/workspace.py: one reused buffer per name, grown when needed."""
from __future__ import annotations

import torch

from ofa.modules.workspace import Workspace


def test_smaller_requests_reuse_the_buffer_and_larger_or_other_dtypes_replace_it() -> None:
    work = Workspace()
    a = work.get("x", (4, 10), torch.float32, torch.device("cpu"))
    b = work.get("x", (3, 10), torch.float32, torch.device("cpu"))  # fewer rows: the same storage
    assert b.shape == (3, 10) and b.data_ptr() == a.data_ptr()
    c = work.get("x", (5, 10), torch.float32, torch.device("cpu"))  # more: a new buffer
    assert c.shape == (5, 10) and work.buffers["x"].numel() == 50
    d = work.get("x", (2, 10), torch.float64, torch.device("cpu"))
    assert d.dtype == torch.float64
    assert work.get("y", (2, 2), torch.float32, torch.device("cpu")).data_ptr() != d.data_ptr()  # names are apart
