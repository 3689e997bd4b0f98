"""experiments/projection_kernels.py: every form of the output projection give the float64 product's values."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import projection_kernels  # noqa: E402

from ofa.modules.decoder import ONEDNN_LINEAR, PACKED_LINEAR  # noqa: E402


def test_one_row_per_size_with_every_form_exact_to_float32(capsys) -> None:
    projection_kernels.main(["--rows", "1", "3", "--vocab", "500", "--dim", "16", "--reps", "1", "--threads", "1"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [1, 3]
    assert [r[5].strip() for r in rows] == ["onednn" if ONEDNN_LINEAR else "straight",
                                            "packed" if PACKED_LINEAR else "flipped"]
    for r in rows:
        errors = [float(e) for e in r[6].split("/")]
        assert len(errors) == 2 + ONEDNN_LINEAR + PACKED_LINEAR and max(errors) < 1e-5
        assert all(float(ms) > 0 for ms in r[1:1 + len(errors)])
