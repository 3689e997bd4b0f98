"""Fault tolerance: atomic checkpoints, safe checkpoint loading, RNG states in checkpoints, resolving
`ckpt_path=last`, run-level config checks made before any work, and one-line errors for all of them.

- `AtomicCheckpointIO`: writes `<dir>/.<name>.*.tmp`, flushes + fsyncs, then `os.replace`s it over the
  target, so a kill never leaves a half-written `last.ckpt`; loads with `weights_only=True` only
  (`ofa.checkpoint.safe_torch_load`): a checkpoint carrying any other pickle global is refused, unrun.
- `RNGStateCallback`: torch (+ CUDA), python `random` and numpy states (every DDP rank's) travel in the
  checkpoint and are put back, each rank its own, just before the first training batch after a resume.
- `resolve_ckpt_path`: `last` = the newest `*/checkpoints/last.ckpt` of this run name.
- `check_run`: missing shard files, and model/task/tokenizer combinations that cannot work.
- `exit_on_fault`: these errors (and a run stopped by non-finite losses) print one line and exit.
"""
from __future__ import annotations

import math
import os
import random
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ofa.checkpoint import CheckpointError, safe_torch_load
from ofa.datamodules.shards import expand_shards
from ofa.utils.logging import get_logger

log = get_logger(__name__)

PATCH = 16  # pixels per image patch (the ResNet's total stride)
SHARD_KEYS = ("train_shards", "val_shards", "test_shards")


class RunConfigError(ValueError):
    """A configuration that cannot work, found before any work is done."""


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


# ------------------------------------------------------------------------------ checkpoint files
class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically (temp file in the same dir, fsync, `os.replace`) and read with
    `weights_only=True` whatever the caller asks; remote URLs (`s3://...`) use Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return safe_torch_load(path)  # CheckpointError for any non-allow-listed global; nothing runs


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temp file next to `path`, fsync, rename over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """`last` -> the newest `last.ckpt` of this run name: `<output_dir>/checkpoints/` or a sibling run dir's
    (`outputs/<run_name>/*/checkpoints/`). Other values must be existing files (Lightning's `best`/`hpc`
    keep their meaning)."""
    if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
        return ckpt_path
    if ckpt_path == "last":
        root = Path(output_dir).parent
        found = [p for p in root.glob("*/checkpoints/last.ckpt") if p.is_file()]
        if not found:
            raise RunConfigError(f"ckpt_path=last: no checkpoint matches {root}/*/checkpoints/last.ckpt")
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if "://" not in ckpt_path and not Path(ckpt_path).is_file():
        raise RunConfigError(f"ckpt_path={ckpt_path}: no such file")
    return ckpt_path


# ------------------------------------------------------------------------------ RNG states
def capture_rng() -> dict[str, Any]:
    """The global RNG states, as tensors and plain Python values (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
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


# ------------------------------------------------------------------------------ non-finite steps
def nonfinite_step(loss: torch.Tensor | None, params: Iterator[torch.nn.Parameter], strategy: Any) -> bool:
    """True on every rank if any rank's loss or any gradient is NaN/inf (max-abs norms cannot overflow)."""
    grads = [p.grad for p in params if p.grad is not None]
    flags = [torch.zeros((), device=grads[0].device if grads else "cpu")]
    if loss is not None:
        flags.append((~torch.isfinite(loss.detach())).any().float().to(flags[0].device))
    if grads:
        norms = torch.stack(torch._foreach_norm(grads, float("inf")))
        flags.append((~torch.isfinite(norms)).any().float())
    bad = torch.stack(flags).sum()
    return bool(strategy.reduce(bad, reduce_op="sum") > 0)


# ------------------------------------------------------------------------------ run checks
def check_run(cfg: DictConfig, tokenizer: Any) -> None:
    """Combinations that would fail later (or silently train nonsense): raise `RunConfigError` now."""
    check_shards(cfg.data)
    tasks = cfg.task.tasks.items() if cfg.task.get("tasks") else [(None, cfg.task)]
    for sub, task in tasks:
        prefix = f"task.tasks.{sub}" if sub else "task"
        check_task(prefix, task, cfg.model, tokenizer)


def check_task(prefix: str, task: DictConfig, model: DictConfig, tokenizer: Any) -> None:
    size, grid = task.get("image_size"), model.image_bucket_size
    if size and math.ceil(size / PATCH) > grid:
        raise RunConfigError(f"{prefix}.image_size={size} gives a {math.ceil(size / PATCH)}x{math.ceil(size / PATCH)} "
                             f"patch grid but model.image_bucket_size={grid} allows at most {grid * PATCH} pixels")
    if task.name == "grounding" and getattr(tokenizer, "num_bins", 0) < 2:
        raise RunConfigError(f"{prefix}: grounding needs <bin_i> location tokens but the tokenizer has "
                             f"{getattr(tokenizer, 'num_bins', 0)}; use a tokenizer with num_bins > 1 (e.g. tokenizer=ofa)")
    for task_key, model_key in (("max_tgt_length", "max_target_positions"), ("max_src_length", "max_source_positions")):
        length, limit = task.get(task_key), model.get(model_key)
        if length and limit and length + 2 > limit:  # + <s> / </s>
            raise RunConfigError(f"{prefix}.{task_key}={length} (+2 special tokens) exceeds "
                                 f"model.{model_key}={limit}")
    max_len = task.get("generation", {}).get("max_len_b") if task.get("generation") else None
    if max_len and model.get("max_target_positions") and max_len + 1 > model.max_target_positions:
        raise RunConfigError(f"{prefix}.generation.max_len_b={max_len} exceeds "
                             f"model.max_target_positions={model.max_target_positions}")


def check_shards(data: DictConfig) -> None:
    """A pattern none of whose local shard files exist is refused; some missing ones are only warned about
    (they are skipped and counted while reading). Remote and `pipe:` URLs are not checked."""
    entries = [("data", data)] + [(f"data.mixture[{i}]", m) for i, m in enumerate(data.get("mixture") or [])]
    for prefix, entry in entries:
        for key in SHARD_KEYS:
            pattern = entry.get(key)
            if not pattern:
                continue
            try:
                urls = expand_shards(pattern)
            except ValueError as err:
                raise RunConfigError(f"{prefix}.{key}={pattern}: {err}") from None
            local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
            missing = [u for u in local if not os.path.exists(u)]
            if missing and len(missing) < len(local):  # some exist: read the rest, skip and count these
                log.warning("%s.%s: %d of %d shard files do not exist, e.g. %s", prefix, key, len(missing),
                            len(urls), missing[0])
            elif missing:
                raise RunConfigError(f"{prefix}.{key}={pattern}: {len(missing)} of {len(urls)} shard files do not "
                                     f"exist, e.g. {missing[0]}")


@contextmanager
def exit_on_fault() -> Iterator[None]:
    """`config error: ...` / `checkpoint error: ...` (exit 2) or `error: ...` (exit 3) on one line."""
    try:
        yield
    except RunConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
