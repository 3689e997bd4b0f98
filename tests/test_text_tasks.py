"""The language tasks through the real entry point: `python train.py task=<name>` trains and evaluates on the
synthetic world's text folders (one GLUE-style classification, summarisation, text infilling), read as a
user's own shards (`data.synthetic_dir=null data.root=<folder>`: the folder's tokenizer.json is used)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from subprocess_runs import run_concurrently
from test_train import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0", "data.shuffle_buffer=8",
        "logger=csv", "trainer.max_epochs=1", "data.batches_per_epoch=3", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "callbacks.progress_bar.refresh_rate=1"]
RUNS = {"cola": {"test/cola/acc", "test/cola/mcc", "test/cola/loss"},
        "gigaword": {"test/gigaword/rouge1", "test/gigaword/rouge2", "test/gigaword/rougeL"},
        "text_infill": {"test/text_infill/exact", "test/text_infill/rougeL"}}
GENERATE = ["task.generation.beam_size=2", "task.generation.max_len_b=6"]


def ofa_sst2_tsv(folder: Path) -> Path:
    """OFA's SST-2 TSV layout (sentence, label 0/1) converted to shards as a user would (`ofa-convert-data sst2`)."""
    from ofa.datamodules.convert import convert_tsv

    for split, n in (("train", 24), ("val", 8)):
        lines = [f"the film was {'great' if i % 2 else 'dull'} , take {i}\t{i % 2}" for i in range(n)]
        (folder / f"sst2_{split}.tsv").write_text("\n".join(lines) + "\n")
        convert_tsv("sst2", folder / f"sst2_{split}.tsv", folder / "shards", split=split, log=False)
    return folder / "shards"


@pytest.fixture(scope="module")
def text_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("text_runs")
    roots = {task: f"{synthetic_data_dir}/text/{task}" for task in RUNS}
    roots["sst2"] = str(ofa_sst2_tsv(out))  # own data: no tokenizer.json there, so one is derived
    commands = []
    for task, root in roots.items():
        extra = GENERATE if task in ("gigaword", "text_infill") else []
        extra += ["trainer.check_val_every_n_epoch=1"] if task == "sst2" else []  # own data: val, no test split
        commands.append([sys.executable, str(ROOT / "train.py"), f"task={task}", f"hydra.run.dir={out / task}",
                         "data.synthetic_dir=null", f"data.root={root}", *TINY_MODEL, *FAST, *extra])
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = run_concurrently(commands, ROOT, env)
    return {task: (proc, out / task) for task, proc in zip(roots, procs)}


@pytest.mark.parametrize("task", sorted(RUNS))
def test_text_task_trains_and_reports_its_metrics(task: str, text_runs: dict) -> None:
    proc, run_dir = text_runs[task]
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert RUNS[task] <= set(metrics) and all(math.isfinite(metrics[k]) for k in RUNS[task])
    assert f"train.py task={task}" not in proc.stderr and "Traceback" not in proc.stderr


def test_ofa_glue_tsv_trains_with_a_derived_tokenizer(text_runs: dict) -> None:
    """OFA's SST-2 TSV -> shards -> `train.py task=sst2`: the tokenizer derived from the shards has the answer
    words as single tokens (else the task refuses to start), and the run validates."""
    proc, run_dir = text_runs["sst2"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir.parent / "shards" / "tokenizer.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["val/sst2/acc"]) and "test/sst2/acc" not in metrics  # no test split converted
