"""The sweep summary: one row per job with its swept values and final metrics (or why it has none)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ofa.utils.report import NO_METRICS_NOTE, write_metrics_json
from ofa.utils.sweep import read_jobs, summarize, write_csv


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    (sweep / str(num) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        write_metrics_json(metrics, sweep / str(num) / "metrics.json")


def test_summary_has_swept_keys_metrics_and_notes(tmp_path: Path) -> None:
    for num in range(11):  # job 10 sorts after 9
        make_job(tmp_path, num, [f"optim.lr={num}e-5", "debug=fdr"], {"val/caption/cider": num / 10})
    make_job(tmp_path, 11, ["optim.lr=9e-4", "debug=fdr"], {})  # too short to validate
    make_job(tmp_path, 12, ["optim.lr=1e-3", "debug=fdr"], None)  # stopped before metrics.json
    header, rows = summarize(read_jobs(tmp_path))
    assert header == ["job", "optim.lr", "val/caption/cider", "note", "overrides"]
    assert [r[0] for r in rows] == [str(n) for n in range(13)]
    assert rows[10][1:3] == ["10e-5", 1.0] and rows[10][-1] == "optim.lr=10e-5 debug=fdr"
    assert rows[11][2] is None and rows[11][3] == NO_METRICS_NOTE
    assert "no metrics.json" in rows[12][3]
    with write_csv(header, rows, tmp_path / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[3]["optim.lr"] == "3e-5" and float(table[3]["val/caption/cider"]) == 0.3


def test_an_empty_run_says_why_in_metrics_json(tmp_path: Path) -> None:
    assert json.loads(write_metrics_json({}, tmp_path / "m.json").read_text()) == {"note": NO_METRICS_NOTE}
