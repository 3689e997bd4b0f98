"""`ThroughputLogger`: training speed in samples per second, all ranks together."""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl


class ThroughputLogger(pl.Callback):
    """Logs `train/samples_per_sec` (all ranks together) averaged over windows of `window` batches; the
    clock starts at the first batch of a window, so time spent in validation is never counted."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._start: float | None = None
        self._samples = 0
        self._batches = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += len(batch["id"]) * trainer.world_size
        self._batches += 1
        if self._batches < self.window or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        pl_module.log("train/samples_per_sec", self._samples / max(elapsed, 1e-9), rank_zero_only=True)
        self._start, self._samples, self._batches = None, 0, 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._samples, self._batches = None, 0, 0  # evaluation time is not training time
