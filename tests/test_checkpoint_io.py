"""ofa.checkpoint_io: atomic checkpoint writes, unsafe checkpoints refused without running anything,
and what `ckpt_path=last` resolves to."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ofa.checkpoint_io import AtomicCheckpointIO, resolve_ckpt_path
from ofa.errors import RunConfigError
from ofa.safe_load import CheckpointError


class Evil:
    """Unpickling this creates the file `path` (stands for arbitrary code execution)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def evil_checkpoint(tmp_path: Path, marker: Path, name: str) -> Path:
    """A Lightning-like checkpoint whose unpickling would create `marker`."""
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil(marker)}, path)
    assert not marker.exists()
    return path


def test_atomic_save_never_leaves_a_partial_file(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["global_step"] == 1

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


def test_unsafe_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path, marker, "evil.ckpt")
    with pytest.raises(CheckpointError, match="refusing to unpickle io.open"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # weights_only=False is not honoured
    assert not marker.exists()


def test_ckpt_path_last_finds_the_newest_run_of_the_name(tmp_path: Path) -> None:
    old, new = tmp_path / "a" / "checkpoints" / "last.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt"
    for i, p in enumerate((old, new)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert resolve_ckpt_path("last", tmp_path / "c") == str(new)
    assert resolve_ckpt_path(str(old), tmp_path / "c") == str(old)
    with pytest.raises(RunConfigError, match="no checkpoint matches"):
        resolve_ckpt_path("last", tmp_path / "nothing" / "run")
    with pytest.raises(RunConfigError, match="no such file"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path / "c")
