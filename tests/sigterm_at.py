"""`python tests/sigterm_at.py HOOK STEP [train.py overrides ...]`: the real train.py, which sends itself SIGTERM at
one exact point, so a test reproduces a signal's timing instead of hoping a race hits it.

HOOK is where, at global step STEP (the optimizer steps done when the hook runs):
- `batch_end`: in `on_train_batch_end`, just after `PreemptionCheckpoint`'s own end-of-batch check (a signal that
  misses the save at the end of that batch; in an epoch's last batch it is only seen after the epoch-end
  bookkeeping);
- `epoch_end`: in `on_train_epoch_end` (the epoch's end, before Lightning counts the epoch as completed).

The command line is train.py's (`sys.argv[0]` is train.py), so the printed resume command is train.py's too.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
sys.path.insert(0, str(TRAIN.parent))  # this checkout's `ofa`, as for `python train.py`

from ofa import factory  # noqa: E402
HOOKS = ("batch_end", "epoch_end")


class SigtermAt(pl.Callback):
    """SIGTERM to this process when `hook` runs at global step `step` (Python runs the handler at once)."""

    def __init__(self, hook: str, step: int) -> None:
        if hook not in HOOKS:
            raise SystemExit(f"sigterm_at.py: HOOK must be one of {HOOKS}, got {hook!r}")
        self.hook, self.step = hook, step

    def _maybe_signal(self, hook: str, trainer: pl.Trainer) -> None:
        if hook == self.hook and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._maybe_signal("batch_end", trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_signal("epoch_end", trainer)


def main() -> None:
    hook, step, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    build_trainer = factory.build_trainer

    def with_signal(trainer_cfg: Any, logger: Any, callbacks: list[pl.Callback]) -> pl.Trainer:
        return build_trainer(trainer_cfg, logger, [*callbacks, SigtermAt(hook, step)])  # after PreemptionCheckpoint

    factory.build_trainer = with_signal
    sys.argv = [str(TRAIN), *overrides]
    runpy.run_path(str(TRAIN), run_name="__main__")


if __name__ == "__main__":
    main()
