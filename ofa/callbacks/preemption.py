"""`PreemptionCheckpoint`: a run stopped by SIGTERM (a scheduler preempting it, `kill`, a time limit) saves
`last.ckpt` at the step it reached and says, on one line, where it is and how to resume.

Lightning's own machinery does the signal handling: its signal connector records SIGTERM
(`trainer.received_sigterm`; under DDP rank 0 forwards it to the other ranks), the training loop finishes
the step in flight and raises `SIGTERMException` (a `SystemExit`) after it, which reaches every callback's
`on_exception`. The checkpoint is written through the trainer (`trainer.save_checkpoint`: the atomic
checkpoint IO of `ofa.checkpoint_io`, every rank's state such as RNGs gathered) at the end of that training
batch (`on_train_batch_end` with `trainer.received_sigterm` set), the very point where the step checkpoints
are written, whose resumes are bitwise exact (tests/test_resume_exact.py). A signal that arrives after that
check (later in that hook, during validation, while a step checkpoint is written, or at an epoch's end) is saved
in `on_exception`; in an epoch's last batch that is after Lightning counted the epoch completed, a state whose
stream position `OFADataModule.state_dict` reads as the next epoch's start (tests/sigterm_at.py puts the signal
at exactly these points).
Then one line says where and how to resume, and `ofa.train` exits with `EXIT_CODE` (143 = 128 + SIGTERM),
so a scheduler records a stopped job, not a finished one.
"""
from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class PreemptionCheckpoint(pl.Callback):
    """On `SIGTERMException` during `fit`: `<dirpath>/last.ckpt` at the current step and one line on stderr,
    `preempted (SIGTERM) at step N: saved <path>; resume with: <command> ckpt_path=<path>`."""

    def __init__(self, dirpath: str | Path, command: list[str]) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.command = [c for c in command if not c.startswith("ckpt_path=")]  # the run's own, with its overrides
        self.saved_step: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved_step = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.saved_step is None and trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False):
            self.save(trainer)  # every rank together (a collective save); the loop raises SIGTERMException next

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn != TrainerFn.FITTING:
            message = f"stopped by SIGTERM during {trainer.state.fn.value}; nothing to save"
        else:
            if self.saved_step is None:
                self.save(trainer)
            resume = shlex.join([*self.command, f"ckpt_path={self.path.resolve()}"])
            message = (f"preempted (SIGTERM) at step {self.saved_step}: saved {self.path.resolve()}; "
                       f"resume with: {resume}")
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)

    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # everything a resume needs
        self.saved_step = trainer.global_step


def run_command(argv0: str, overrides: list[str]) -> list[str]:
    """The words that start this run again: `python train.py <overrides>` for a script, else the console
    command (`ofa-train <overrides>`)."""
    program = ["python", argv0] if argv0.endswith(".py") else [Path(argv0).name]
    return [*program, *overrides]

