"""Errors that end a run with one line (train.py's exit handler prints them; no traceback)."""
from __future__ import annotations

from typing import Any


class RunConfigError(ValueError):
    """A configuration that cannot work, found before any work is done (exit 2, `config error: ...`)."""


def check_values(rules: list[tuple[str, Any, bool, str]]) -> None:
    """`__post_init__` range checks of config dataclasses: the first `(key, value, ok, why)` with `ok` False
    raises `RunConfigError("<key>=<value>: <why>")`, `key` being the config key a user types (`optim.lr`)."""
    for key, value, ok, why in rules:
        if not ok:
            raise RunConfigError(f"{key}={value}: {why}")
