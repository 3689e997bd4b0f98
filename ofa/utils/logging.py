"""A logger that speaks only on rank 0 (so DDP runs print each message once)."""
from __future__ import annotations

import logging

from lightning_utilities.core.rank_zero import rank_zero_only


def get_logger(name: str = "ofa") -> logging.Logger:
    """Python logger whose info/warning/error calls are no-ops on ranks other than 0."""
    logger = logging.getLogger(name)
    if getattr(logger, "_rank_zero_only", False):
        return logger
    logger._rank_zero_only = True  # type: ignore[attr-defined]
    for level in ("debug", "info", "warning", "error", "exception", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger
