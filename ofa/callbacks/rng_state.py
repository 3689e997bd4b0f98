"""`RNGStateCallback`: the global RNG states travel in every checkpoint, so a resumed run draws exactly the
random numbers (dropout, `random.choice`, numpy) that the interrupted run would have drawn."""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist


def capture_rng() -> dict[str, Any]:
    """The global RNG states, as tensors and plain Python values (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back what `capture_rng` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCallback(pl.Callback):
    """Saves the global RNG states with every checkpoint; after a resume, restores them right before the
    first training batch, i.e. where the interrupted run saved them (the data streams use their own RNGs,
    so nothing in between draws from the global ones). Under DDP every rank's states are gathered into the
    checkpoint (`per_rank`; ranks draw differently, e.g. dropout on different batch shapes) and each rank gets
    its own back; resumed with another world size (or from an older checkpoint), rank 0's on every rank."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:  # called on every rank by `trainer.save_checkpoint`
        state = capture_rng()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state)
            state = {**state, "per_rank": per_rank}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            per_rank = self._pending.get("per_rank")
            own = per_rank is not None and len(per_rank) == trainer.world_size
            restore_rng(per_rank[trainer.global_rank] if own else self._pending)
            self._pending = None
