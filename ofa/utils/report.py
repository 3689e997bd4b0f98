"""Final metrics: a printed table and a flat `metrics.json` (what sweeps and the README read)."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPORTED_PREFIXES = ("val/", "test/")
NO_METRICS_NOTE = ("no val/test metrics: the run ended before any validation or test "
                   "(more steps, trainer.limit_val_batches > 0, or a split with shards)")


def collect_metrics(callback_metrics: Mapping[str, Any], prefixes: tuple[str, ...] = REPORTED_PREFIXES) -> dict:
    """Scalars whose name starts with one of `prefixes`, as plain floats, sorted by name."""
    out = {}
    for name, value in callback_metrics.items():
        if name.startswith(prefixes):
            out[name] = float(value.item() if isinstance(value, torch.Tensor) else value)
    return dict(sorted(out.items()))


def format_table(metrics: Mapping[str, float], title: str = "final metrics") -> str:
    """A two-column plain-text table (readable in logs and CI output)."""
    if not metrics:
        return f"{title}: {NO_METRICS_NOTE}"
    width = max(len(k) for k in metrics)
    rule = "-" * (width + 14)
    rows = [f"{k:<{width}}  {_fmt(v):>12}" for k, v in metrics.items()]
    return "\n".join([rule, f"{title}", rule, *rows, rule])


def write_metrics_json(metrics: Mapping[str, float], path: str | Path) -> Path:
    """Write a flat JSON object; NaN/inf become null so the file stays valid JSON. A run without any
    val/test value writes `{"note": NO_METRICS_NOTE}` instead of `{}`, so a sweep summary says why."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()} or {"note": NO_METRICS_NOTE}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path


def format_grid(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with one column per header entry (floats with 4 decimals, missing as `-`)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r, widths)).rstrip() for r in [list(header), *cells]]
    rule = "-" * max(len(ln) for ln in lines)
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


def rank_summary(trainer: Any) -> str:
    """`[rank 0/2] train batches: 300, optimizer steps: 300` (every rank prints its own: DDP checks)."""
    batches = trainer.fit_loop.epoch_loop.batch_progress.total.completed
    return (f"[rank {trainer.global_rank}/{trainer.world_size}] train batches: {batches}, "
            f"optimizer steps: {trainer.global_step}")


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return _fmt(value) if isinstance(value, float) else str(value)
