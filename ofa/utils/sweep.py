"""Sweeps (`python train.py -m optim.lr=1e-5,3e-5`, `hparams_search=...`): one directory, one summary.

`SweepSummary` is a Hydra callback (`hydra.callbacks` in conf/train.yaml):
- at the start it resolves the sweep directory once, from the sweep's own config, and pins it for every
  job. Hydra resolves `hydra.sweep.dir` before it has set the runtime choices that the default run name
  uses (`${hydra:runtime.choices.model}`), and each job would otherwise re-resolve it with its own run
  name (a sweep over `model=` or `task=` would scatter its jobs);
- at the end it reads every job's `.hydra/overrides.yaml` and `metrics.json` and writes `summary.csv`
  in the sweep directory (one row per job: the swept values, the final metrics, the full overrides),
  and prints the same table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ofa.utils.report import format_grid

SUMMARY_FILE = "summary.csv"


class SweepSummary(Callback):
    """Pins the sweep directory at the start; writes and prints `summary.csv` at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # Hydra sets it for each job, not for the sweep itself
        sweep_dir = str(Path(str(config.hydra.sweep.dir)).absolute())
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quote(sweep_dir)}")  # jobs recompose from it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        header, rows = summarize(read_jobs(sweep_dir))
        path = write_csv(header, rows, sweep_dir / SUMMARY_FILE)
        print(format_grid(header[:-1], [r[:-1] for r in rows]))  # the full overrides only in the file
        print(f"sweep summary ({len(rows)} jobs) written to {path}", flush=True)


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job directory of the sweep: its number, overrides (key -> value) and metrics.json."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {
            "note": "no metrics.json: the job stopped before the end"}
        jobs.append({"job": job_dir.name, "overrides": overrides, "metrics": metrics})
    return sorted(jobs, key=lambda j: (not j["job"].isdigit(), int(j["job"]) if j["job"].isdigit() else j["job"]))


def summarize(jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns: job, each swept key (its value differs between jobs; every key for a single job), the
    metrics (val, then test), `note` when any job has one, and the job's full overrides (last)."""
    values = [dict(o.split("=", 1) for o in j["overrides"] if "=" in o) for j in jobs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    swept = [k for k in keys if len(jobs) == 1 or len({v.get(k) for v in values}) > 1]
    metric_names = sorted({m for j in jobs for m in j["metrics"] if m != "note"}, key=lambda m: (m[:4] != "val/", m))
    notes = ["note"] if any("note" in j["metrics"] for j in jobs) else []
    header = ["job", *swept, *metric_names, *notes, "overrides"]
    rows = [[j["job"], *(v.get(k, "") for k in swept), *(j["metrics"].get(m) for m in metric_names),
             *(j["metrics"].get("note", "") for _ in notes), " ".join(j["overrides"])]
            for j, v in zip(jobs, values)]
    return header, rows


def write_csv(header: list[str], rows: list[list[Any]], path: Path) -> Path:
    """The summary as CSV (empty cells for missing values)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def _quote(value: str) -> str:
    """A value for Hydra's override grammar, taken literally."""
    return "'" + value.replace("'", "\\'") + "'"
