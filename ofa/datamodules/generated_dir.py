"""A generated folder, made once: built in a temporary sibling and renamed into place.

Concurrent processes are safe (each builds its own temporary folder; the first rename wins), and a folder
generated with another config is replaced. The config is recorded in the folder's `summary.json`
(`{"config": ...}`), which the generator writes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def generated_with(out: Path, config: dict[str, Any]) -> bool:
    """True if `out/summary.json` records `config`."""
    summary = out / "summary.json"
    return summary.is_file() and json.loads(summary.read_text("utf-8")).get("config") == config


def ensure_generated(out_dir: str | os.PathLike, config: dict[str, Any], generate: Callable[[Path], None]) -> Path:
    """`generate(tmp)` into a temporary folder renamed to `out_dir`, unless `out_dir` already records `config`."""
    out = Path(out_dir).expanduser().resolve()
    if generated_with(out, config):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        generate(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if generated_with(out, config):  # a concurrent process finished first
            return out
        if out.exists():  # another config
            shutil.rmtree(out)
        os.rename(tmp, out)
    except OSError:
        if not generated_with(out, config):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
