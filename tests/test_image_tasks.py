"""The image-writing tasks through the real entry point: the synthetic world's code shards made with a VQGAN
(`ensure_code_shards`, what train.py does on first use), then `python train.py task=image_gen` and
`task=image_infill` on them train, sample / decode images and write the grids; a missing VQGAN is a one-line
error naming `task.vqgan`."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from ofa.datamodules.synthetic_codes import ensure_code_shards
from subprocess_runs import run_command, run_concurrently
from test_text_tasks import FAST
from test_train import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "image_gen": (["model.code_image_size=64", "task.code_image_size=64", "task.generation.beam_size=2",
                   "task.grid_size=4"], {"test/image_gen/loss"}),
    "image_infill": (["model.code_image_size=32", "task.image_size=64"],
                     {"test/image_infill/loss", "test/image_infill/code_acc", "test/image_infill/psnr"}),
}


@pytest.fixture(scope="module")
def image_runs(synthetic_data_dir: Path, tiny_vqgan_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("image_runs")
    sizes = {"image_gen": {"code_image_size": 64}, "image_infill": {"image_size": 64}}
    roots = {task: ensure_code_shards(str(synthetic_data_dir), task, {"vqgan": str(tiny_vqgan_dir), **sizes[task]})
             for task in RUNS}
    commands = [[sys.executable, str(ROOT / "train.py"), f"task={task}", f"hydra.run.dir={out / task}",
                 "data.synthetic_dir=null", f"data.root={roots[task]}", f"task.vqgan={tiny_vqgan_dir}", *TINY_MODEL,
                 *FAST, *extra] for task, (extra, _) in RUNS.items()]
    procs = run_concurrently(commands, ROOT, {**os.environ, "WANDB_MODE": "offline"})
    return {task: (proc, out / task) for task, proc in zip(RUNS, procs)}


@pytest.mark.parametrize("task", sorted(RUNS))
def test_image_task_trains_decodes_and_writes_grids(task: str, image_runs: dict, synthetic_data_dir: Path) -> None:
    proc, run_dir = image_runs[task]
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = RUNS[task][1]
    assert expected <= set(metrics) and all(math.isfinite(metrics[k]) for k in expected)
    assert sorted(p.name for p in (run_dir / "images").iterdir())  # val/test grids of decoded images
    shards = synthetic_data_dir / ("image_gen/codes" if task == "image_gen" else "image_infill")
    summary = json.loads((shards / "summary.json").read_text())
    assert summary["counts"]["coded"] > 0 and sorted(shards.glob("train-*.tar"))
    assert summary["config"]["vqgan"] == str(Path(summary["config"]["vqgan"]).resolve())


def test_missing_vqgan_is_one_line(tmp_path: Path) -> None:
    proc = run_command([sys.executable, str(ROOT / "train.py"), "task=image_gen", f"hydra.run.dir={tmp_path}",
                        f"paths.data_dir={tmp_path}", f"task.vqgan={tmp_path / 'none'}",
                        "model.code_image_size=64", "task.code_image_size=64", *TINY_MODEL, *FAST],
                       ROOT, {**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode != 0
    assert "task.vqgan=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "synthetic").exists()  # refused before the world is generated


def test_missing_synthetic_tokenizer_names_the_command(tmp_path: Path) -> None:
    from ofa.datamodules.synthetic_codes import vqgan_stamp
    from ofa.errors import RunConfigError

    with pytest.raises(RunConfigError, match=r"vq_nano: no last.ckpt there.*python train_vq.py"):
        vqgan_stamp(str(tmp_path / "vq_nano"))
    with pytest.raises(RunConfigError) as other:
        vqgan_stamp(str(tmp_path / "my_vqgan"))
    assert "train_vq" not in str(other.value)
