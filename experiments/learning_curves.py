"""Learning curves of a run from its CSV log: per-task training loss over windows of steps, then every validation.

    .venv/bin/python experiments/learning_curves.py RUN_DIR [--window 250]

RUN_DIR is a run's output directory (`hydra.run.dir`) trained with `logger=csv`; the log is
RUN_DIR/csv/version_*/metrics.csv (the newest version). Train losses are per target token (the mean of the
logged values whose step falls in each window; the logger records every `trainer.log_every_n_steps`).
Validation rows are the `val/<task>/<metric>` values at each validation (`trainer.check_val_every_n_epoch=1` for
a curve); `test/...` values, when present, are printed last. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path


def read_log(run_dir: Path) -> list[dict[str, str]]:
    versions = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not versions:
        raise SystemExit(f"no CSV log under {run_dir}/csv: train with logger=csv")
    with versions[-1].open(newline="") as f:
        return list(csv.DictReader(f))


def _number(value: str | None) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def train_curves(rows: list[dict[str, str]], window: int) -> tuple[list[str], dict[int, dict[str, float]]]:
    """{window start: {task: mean loss}} for every `train/<task>/loss` column."""
    tasks = sorted({k.split("/")[1] for row in rows for k in row if k.startswith("train/") and k.endswith("/loss")
                    and k.count("/") == 2})
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        step = _number(row.get("step"))
        if step is None:
            continue
        for task in tasks:
            value = _number(row.get(f"train/{task}/loss"))
            if value is not None:
                sums[int(step) // window * window][task].append(value)
    return tasks, {start: {t: sum(v) / len(v) for t, v in by_task.items()} for start, by_task in sorted(sums.items())}


def eval_rows(rows: list[dict[str, str]], split: str) -> tuple[list[str], list[tuple[int, dict[str, float]]]]:
    """[(step, {task/metric: value})] for the rows with `split/...` values (losses left out)."""
    keys = sorted({k for row in rows for k in row if k.startswith(f"{split}/") and not k.endswith("/loss")
                   and k.count("/") == 2})
    out = []
    for row in rows:
        values = {k[len(split) + 1:]: v for k in keys if (v := _number(row.get(k))) is not None}
        if values:
            out.append((int(_number(row.get("step")) or 0), values))
    return [k[len(split) + 1:] for k in keys], out


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--window", type=int, default=250, help="steps per row of the train-loss table")
    args = parser.parse_args(argv)
    rows = read_log(args.run_dir)
    tasks, curves = train_curves(rows, args.window)
    if curves:
        print(f"train loss per token, mean over steps [start, start + {args.window})\n")
        print(table(["steps"] + tasks, [[f"{s}-{s + args.window - 1}"] + [f"{c[t]:.3f}" if t in c else "" for t in tasks]
                                        for s, c in curves.items()]))
    for split in ("val", "test"):
        keys, evals = eval_rows(rows, split)
        if evals:
            print(f"\n{split} (step: metrics)\n")
            print(table(["step"] + keys, [[str(step)] + [f"{v[k]:.3f}" if k in v else "" for k in keys]
                                           for step, v in evals]))


if __name__ == "__main__":
    main(sys.argv[1:])
