"""`DataSkipLogger`: bad data never stops a run and is never silent.

The datamodule skips and counts unusable shards and samples by reason (`OFADataModule.skip_counts(split)`,
shared-memory counters that include the DataLoader workers). This callback sums the counts over ranks and
- logs `data/skipped/<reason>` and `data/skipped/total` at the end of every train, val and test epoch, and
  every `every_n_steps` optimizer steps during training (0: only at epoch ends);
- prints one line per stage on rank zero when fit, validate or test ends, e.g.
  `data skipped during fit (2 ranks): 12 - bad_image: 3, missing_file: 9 (train: 10, val: 2)`.
The numbers are those of the current stage (fit = train + val loaders, validate = val, test = test),
cumulative from its start. Every rank must run the same hooks (Lightning does): the sums are collectives.
A datamodule without `skip_counts()` gets a warning and no skip metrics.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn

from ofa.datamodules.shards import REASONS

SPLITS = ("train", "val", "test")
STAGE_SPLITS = {TrainerFn.FITTING: ("train", "val"), TrainerFn.VALIDATING: ("val",), TrainerFn.TESTING: ("test",)}
STAGE_NAMES = {TrainerFn.FITTING: "fit", TrainerFn.VALIDATING: "validate", TrainerFn.TESTING: "test"}


class DataSkipLogger(pl.Callback):
    """Logs and summarises the datamodule's skipped-data counts (see the module docstring)."""

    def __init__(self, every_n_steps: int = 100, prefix: str = "data/skipped") -> None:
        if every_n_steps < 0:
            raise ValueError(f"DataSkipLogger: every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps, self.prefix = every_n_steps, prefix
        self._baseline = torch.zeros(len(SPLITS), len(REASONS), dtype=torch.int64)
        self._last_step = -1
        self._enabled = False
        self.last_counts: dict[str, int] = {}  # the latest summed counts of the current stage, by reason

    # ---- counts ------------------------------------------------------------------------------------
    def _local(self, trainer: pl.Trainer) -> torch.Tensor:
        """(splits, reasons) counts of this rank since the loaders were built."""
        counts = torch.zeros(len(SPLITS), len(REASONS), dtype=torch.int64)
        for i, split in enumerate(SPLITS):
            by_reason = trainer.datamodule.skip_counts(split)
            counts[i] = torch.tensor([int(by_reason.get(r, 0)) for r in REASONS])
        return counts

    def _summed(self, trainer: pl.Trainer) -> torch.Tensor:
        """(splits, reasons) counts of the current stage, summed over ranks (a collective on every rank)."""
        local = (self._local(trainer) - self._baseline).to(trainer.strategy.root_device)
        total = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        return total.cpu()

    def _by_reason(self, trainer: pl.Trainer, counts: torch.Tensor) -> dict[str, int]:
        """reason -> count over the splits of the current stage."""
        rows = [SPLITS.index(s) for s in STAGE_SPLITS.get(trainer.state.fn, SPLITS)]
        return dict(zip(REASONS, counts[rows].sum(0).tolist()))

    def _metrics(self, by_reason: dict[str, int]) -> dict[str, float]:
        metrics = {f"{self.prefix}/{r}": float(n) for r, n in by_reason.items()}
        metrics[f"{self.prefix}/total"] = float(sum(by_reason.values()))
        return metrics

    # ---- stage start (before any loader of the stage is built): counts are per stage --------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._enabled = callable(getattr(trainer.datamodule, "skip_counts", None))
        if not self._enabled:
            rank_zero_warn("DataSkipLogger: the datamodule has no skip_counts(); skipped data is not reported")
            return
        self._baseline = self._local(trainer)
        self._last_step = -1

    # ---- logging -------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._enabled and self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.last_counts = self._by_reason(trainer, self._summed(trainer))  # every rank: collective
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(self._metrics(self.last_counts), step=step)

    def _log_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        local = self._by_reason(trainer, self._local(trainer) - self._baseline)
        for name, value in self._metrics(local).items():  # Lightning sums over ranks
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_epoch(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_epoch(trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_epoch(trainer, pl_module)

    # ---- one summary line per stage --------------------------------------------------------------------
    def _summarise(self, trainer: pl.Trainer) -> None:
        if not self._enabled:
            return
        counts = self._summed(trainer)  # every rank: collective
        self.last_counts = self._by_reason(trainer, counts)
        if trainer.is_global_zero:
            splits = STAGE_SPLITS.get(trainer.state.fn, SPLITS)
            by_split = {s: int(counts[SPLITS.index(s)].sum()) for s in splits}
            print(format_summary(STAGE_NAMES.get(trainer.state.fn, str(trainer.state.fn)), trainer.world_size,
                                 self.last_counts, by_split), flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._summarise(trainer)  # the end of fit: validation runs inside the training loop

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._summarise(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._summarise(trainer)


def format_summary(stage: str, world_size: int, by_reason: dict[str, int], by_split: dict[str, int]) -> str:
    """`data skipped during fit (1 rank): 3 - bad_image: 2, bad_json: 1 (train: 3, val: 0)`."""
    ranks = f"{world_size} rank{'s' if world_size > 1 else ''}"
    total = sum(by_reason.values())
    if not total:
        return f"data skipped during {stage} ({ranks}): none"
    reasons = ", ".join(f"{r}: {n}" for r, n in by_reason.items() if n)
    splits = ", ".join(f"{s}: {n}" for s, n in by_split.items())
    return f"data skipped during {stage} ({ranks}): {total} - {reasons} ({splits})"
