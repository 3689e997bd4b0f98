"""Data: WebDataset shards -> `task.preprocess` -> `collate` -> batches (`OFADataModule`).

`OFADataModule` and `TaskData` are imported lazily, so that the command-line tools of this package
(`python -m ofa.datamodules.synthetic`, `...convert`) start without importing Lightning.
"""
from __future__ import annotations

from typing import Any

from ofa.datamodules.collate import collate
from ofa.datamodules.shards import SkipCounter, expand_shards
from ofa.datamodules.synthetic import ensure_synthetic_dataset

__all__ = ["OFADataModule", "SkipCounter", "TaskData", "collate", "ensure_synthetic_dataset", "expand_shards"]


def __getattr__(name: str) -> Any:
    if name in ("OFADataModule", "TaskData"):
        from ofa.datamodules import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'ofa.datamodules' has no attribute {name!r}")
