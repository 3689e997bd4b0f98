"""Errors that end a run with one line (train.py's exit handler prints them; no traceback)."""
from __future__ import annotations


class RunConfigError(ValueError):
    """A configuration that cannot work, found before any work is done (exit 2, `config error: ...`)."""
