"""The platform's Lightning callbacks, one file each, and the callbacks the `callbacks` config group can set.

- `CALLBACKS`: config key -> class of the platform's own configurable callbacks.
- `LIGHTNING_CALLBACKS`: config key -> class of the Lightning callbacks the group can set.
The callbacks config schema (`ofa.schemas.callbacks_schema`) has one optional, signature-typed field per key of
both. `RNGStateCallback` is not configurable: `ofa.factory.build_trainer` always adds it (exact resumes); nor is
`PreemptionCheckpoint`: `ofa.train` always adds it (SIGTERM: last.ckpt at the current step, exit 143).
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import (EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelSummary,
                                         RichProgressBar, TQDMProgressBar)

from ofa.callbacks.data_skips import DataSkipLogger
from ofa.callbacks.preemption import PreemptionCheckpoint
from ofa.callbacks.rng_state import RNGStateCallback
from ofa.callbacks.throughput import ThroughputLogger

LIGHTNING_CALLBACKS: dict[str, type[pl.Callback]] = {
    "model_checkpoint": ModelCheckpoint,
    "step_checkpoint": ModelCheckpoint,
    "early_stopping": EarlyStopping,
    "lr_monitor": LearningRateMonitor,
    "progress_bar": TQDMProgressBar,
    "rich_progress_bar": RichProgressBar,
    "model_summary": ModelSummary,
}
CALLBACKS: dict[str, type[pl.Callback]] = {
    "throughput": ThroughputLogger,
    "data_skips": DataSkipLogger,
}

__all__ = ["CALLBACKS", "LIGHTNING_CALLBACKS", "DataSkipLogger", "PreemptionCheckpoint", "RNGStateCallback",
           "ThroughputLogger"]
