"""Lightning checkpoint files: atomic writes, safe reads, and what `ckpt_path=last` means.

- `AtomicCheckpointIO` (the trainer's checkpoint IO, always on): writes `<dir>/.<name>.*.tmp`, flushes +
  fsyncs, then `os.replace`s it over the target, so a kill never leaves a half-written `last.ckpt`; loads
  with `ofa.safe_load.safe_torch_load` only: a checkpoint carrying any other pickle global is refused, unrun.
- `resolve_ckpt_path`: `last` = the newest `*/checkpoints/last.ckpt` of this run name (a file, or the sharded
  folder of `trainer=fsdp2`, `ofa.sharding`).
- `model_record`: what `OFALitModule` stores in every `.ckpt` under `checkpoint["ofa"]` so that the file
  alone rebuilds the model (`init_from=`, `python -m ofa.checkpoint convert`, `stage=test`): the
  `OFAConfig` as a plain dict and the tokenizer (`tokenizer_record`). Plain containers only, so the
  `weights_only=True` reader needs no allow-list entry for them.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ofa.checkpoint import TOKENIZER_FILE, text_sha256
from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig
from ofa.safe_load import safe_torch_load


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
        found = [p for p in root.glob("*/checkpoints/last.ckpt") if is_checkpoint(p)]
        if not found:
            raise RunConfigError(f"ckpt_path=last: no checkpoint matches {root}/*/checkpoints/last.ckpt")
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if "://" not in ckpt_path and not is_checkpoint(Path(ckpt_path)):
        raise RunConfigError(f"ckpt_path={ckpt_path}: no such file (nor a sharded checkpoint folder)")
    return ckpt_path


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded checkpoint folder (torch.distributed.checkpoint shards + Lightning's
    `meta.pt`)."""
    return path.is_file() or (path / "meta.pt").is_file()


def tokenizer_record(kind: str, path: str | os.PathLike, tokenizer: Any) -> dict:
    """The run's vocabulary as a checkpoint carries it: its identity (configured kind and path, sha256 of
    the content) and the content itself, the whole vocabulary as one `tokenizers` JSON text (any kind
    saves to it; `tokenizer=trained tokenizer.path=<that file>` reads it back), so the checkpoint still
    rebuilds the model's tokenizer after the original files moved or changed."""
    with tempfile.TemporaryDirectory() as tmp:
        text = tokenizer.save(Path(tmp) / TOKENIZER_FILE).read_text("utf-8")
    return {"kind": str(kind), "path": str(path), "sha256": text_sha256(text), "json": text}


def model_record(model_cfg: OFAConfig, tokenizer: dict | None) -> dict:
    """`checkpoint["ofa"]`: the model config as plain JSON values (no dataclass, no OmegaConf node) and
    the tokenizer record (None when the module was built without one)."""
    return {"version": 1, "model_config": json.loads(json.dumps(model_cfg.to_dict())), "tokenizer": tokenizer}
