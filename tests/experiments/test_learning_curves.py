"""experiments/learning_curves.py: windows of per-task train loss and every validation, read from a CSV log the way
Lightning's CSVLogger writes it (one row per logging call, empty cells elsewhere)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import learning_curves  # noqa: E402

COLUMNS = ["epoch", "step", "train/caption/loss", "train/vqa/loss", "train/loss", "val/caption/cider",
           "val/caption/loss", "val/vqa/score", "test/vqa/score"]


def write_log(run_dir: Path, rows: list[dict]) -> None:
    path = run_dir / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_windows_average_each_tasks_logged_losses_and_validations_keep_their_step(tmp_path: Path, capsys) -> None:
    write_log(tmp_path, [
        {"epoch": 0, "step": 9, "train/caption/loss": 6.0, "train/vqa/loss": 2.0, "train/loss": 4.0},
        {"epoch": 0, "step": 19, "train/caption/loss": 4.0, "train/loss": 4.0},     # no VQA sample in this batch
        {"epoch": 0, "step": 29, "train/caption/loss": 3.0, "train/vqa/loss": 1.0},
        {"epoch": 0, "step": 29, "val/caption/cider": 0.5, "val/caption/loss": 3.3, "val/vqa/score": 0.25},
        {"epoch": 1, "step": 59, "val/caption/cider": 1.25, "val/vqa/score": 0.5},
        {"epoch": 1, "step": 60, "test/vqa/score": 0.75},
    ])
    rows = learning_curves.read_log(tmp_path)
    tasks, curves = learning_curves.train_curves(rows, window=20)
    assert tasks == ["caption", "vqa"]
    assert curves == {0: {"caption": 5.0, "vqa": 2.0}, 20: {"caption": 3.0, "vqa": 1.0}}
    keys, evals = learning_curves.eval_rows(rows, "val")
    assert keys == ["caption/cider", "vqa/score"]  # losses are not metrics
    assert evals == [(29, {"caption/cider": 0.5, "vqa/score": 0.25}), (59, {"caption/cider": 1.25, "vqa/score": 0.5})]

    learning_curves.main([str(tmp_path), "--window", "20"])
    out = capsys.readouterr().out
    assert "| 0-19 | 5.000 | 2.000 |" in out and "| 59 | 1.250 | 0.500 |" in out and "| 60 | 0.750 |" in out


def test_a_run_without_a_csv_log_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no CSV log under .*logger=csv"):
        learning_curves.read_log(tmp_path)
