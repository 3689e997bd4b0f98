"""Data: WebDataset shards -> `task.preprocess` -> `collate` -> batches (`OFADataModule`).

Every name is imported lazily, so that the command-line tools of this package
(`python -m ofa.datamodules.synthetic`, `...convert`) start without importing torch or Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "OFADataModule": "datamodule", "TaskSource": "datamodule", "LoaderConfig": "datamodule",
    "build_sources": "datamodule", "collate": "collate",
    "SkipCounter": "shards", "expand_shards": "shards", "ensure_synthetic_dataset": "synthetic",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ofa.datamodules.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ofa.datamodules' has no attribute {name!r}")
