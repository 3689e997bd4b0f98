"""experiments/bench_gpu.py runs end to end on the CPU with a tiny model (the GPU run itself: experiments/README.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import bench_gpu  # noqa: E402

TINY = ["--device", "cpu", "--models", "ofa_tiny", "--steps", "1", "--warmup", "0", "--batch", "2",
        "--image-size", "32", "--src-len", "8", "--tgt-len", "3", "--peak-tflops", "1"]


def test_bench_gpu_reports_tokens_flops_and_mfu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = bench_gpu.main([*TINY, "--phases", "train", "greedy", "--json", str(tmp_path / "r.json")])
    train, greedy = results["ofa_tiny"]["train"], results["ofa_tiny"]["greedy"]
    assert train["tokens_per_s"] == pytest.approx(2 * 3 / train["s_per_batch"])
    tokens, d_model = 2 * 3, 256  # ofa_tiny; the tied output projection alone: 2 x tokens x d x V forward, 2x back
    assert train["flops_per_step"] > 3 * 2 * tokens * d_model * bench_gpu.VOCAB
    assert train["mfu"] == pytest.approx(train["tflops_per_s"] / 1.0)  # --peak-tflops 1
    assert greedy["tokens_per_s"] > 0 and "mfu" not in greedy
    assert "| ofa_tiny | 33 | 2 x 32 | train |" in capsys.readouterr().out and (tmp_path / "r.json").is_file()


def test_bench_gpu_skips_phases_past_its_budget() -> None:
    results = bench_gpu.main([*TINY, "--phases", "greedy", "--budget-s", "0"])
    assert results["ofa_tiny"]["greedy"] == {"skipped": "budget"}
