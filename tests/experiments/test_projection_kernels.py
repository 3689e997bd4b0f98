"""experiments/projection_kernels.py: both forms of the output projection give the float64 product's values."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import projection_kernels  # noqa: E402


def test_one_row_per_size_with_both_forms_exact_to_float32(capsys) -> None:
    projection_kernels.main(["--rows", "1", "3", "--vocab", "500", "--dim", "16", "--reps", "1", "--threads", "1"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [1, 3]
    for r in rows:
        straight, flipped = (float(e) for e in r[4].split("/"))
        assert straight < 1e-5 and flipped < 1e-5
        assert float(r[1]) > 0 and float(r[2]) > 0
