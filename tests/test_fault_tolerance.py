"""Fault tolerance end to end: unsafe checkpoints refused without running anything through train.py's
ckpt_path / init_from, non-finite steps skipped and counted or the run stopped (`ofa.lit_module`), and
impossible configurations refused before any work, on one line (`Task.check`, `check_shards`).
Checkpoint files themselves: test_checkpoint_io.py and test_safe_load.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from ofa.datamodules.shards import check_shards
from ofa.errors import RunConfigError
from ofa.factory import build_task
from ofa.lit_module import NonFiniteError, nonfinite_grads
from ofa.modules.config import OFAConfig
from ofa.schemas import task_schema
from ofa.tasks import TASKS, Task
from subprocess_runs import run_concurrently
from test_checkpoint_io import evil_checkpoint
from test_lit_module import make_dm, make_module

ROOT = Path(__file__).resolve().parents[1]


def tiny_run(data_dir: Path, run_dir: Path) -> list[str]:
    return [f"hydra.run.dir={run_dir}", "task=caption", "data.synthetic_dir=null",
            f"data.train_shards={data_dir}/train-*.tar",
            f"data.val_shards={data_dir}/val-*.tar", f"data.test_shards={data_dir}/test-*.tar",
            f"tokenizer.path={data_dir}/tokenizer.json", "model.d_model=32", "model.encoder_layers=1",
            "model.decoder_layers=1", "model.encoder_attention_heads=2", "model.decoder_attention_heads=2",
            "model.encoder_ffn_dim=64", "model.decoder_ffn_dim=64", "task.image_size=32", "data.batch_size=2",
            "data.num_workers=0", "data.batches_per_epoch=2", "trainer.max_epochs=1", "logger=none",
            "trainer.limit_val_batches=0", "test_after_fit=false"]


PICKLES = [("ckpt_path", "evil.ckpt"), ("init_from", "evil.pt")]
BAD_CONFIGS = [
    ("data.train_shards='/nowhere/train-{000000..000003}.tar'", "config error: data.train_shards=/nowhere/train-"),
    ("task.image_size=2048", "config error: task.image_size=2048 gives a 128x128 patch grid"),
    ("seeed=3", "seeed"),  # misspelled top-level key
    ("trainer=tpu", "valid choices for 'trainer'"),  # unknown group option
    ("data.batch_size=four", "data.batch_size"),  # wrong type
]


@pytest.fixture(scope="module")
def refused_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Every refused train.py run of this file, started two at a time: override -> (process, run dir, marker)."""
    root = tmp_path_factory.mktemp("refused")
    cases = {}
    for key, name in PICKLES:
        folder = root / key
        folder.mkdir()
        marker = folder / "pwned"
        cases[key] = (f"{key}={evil_checkpoint(folder, marker, name)}", folder / "run", marker)
    for i, (override, _) in enumerate(BAD_CONFIGS):
        cases[override] = (override, root / f"bad{i}" / "run", None)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    commands = [[sys.executable, str(ROOT / "train.py"), *tiny_run(synthetic_data_dir, run), arg]
                for arg, run, _ in cases.values()]
    procs = run_concurrently(commands, ROOT, env)
    return {case: (proc, run, marker) for (case, (_, run, marker)), proc in zip(cases.items(), procs)}


@pytest.mark.parametrize("key, name", PICKLES)
def test_train_refuses_a_pickle_payload_in_one_line(key: str, name: str, refused_runs: dict) -> None:
    proc, _, marker = refused_runs[key]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("checkpoint error:") and "refusing to unpickle io.open" in last, last


# ------------------------------------------------------------------------------ non-finite steps
class WeightWatch(pl.Callback):
    """Whether each optimizer step changed the weights."""

    def __init__(self) -> None:
        self.changed: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = list(pl_module.parameters())
        self.changed[batch_idx] = any(not torch.equal(a, b) for a, b in zip(self._before, after))


def test_nonfinite_step_is_skipped_and_counted(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    module = make_module(tokenizer, debug_nan_steps=[1])
    dm = make_dm(module.tasks, synthetic_shards)
    watch = WeightWatch()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[watch], default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert watch.changed == {0: True, 1: False, 2: True}  # weights untouched by the NaN step only
    assert module.nonfinite_skipped == 1
    assert trainer.callback_metrics["train/nonfinite_skipped"].item() == 1.0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    module = make_module(tokenizer, debug_nan_steps=[0, 1], max_nonfinite_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"2 steps in a row .*module.max_nonfinite_steps=2"):
        trainer.fit(module, datamodule=make_dm(module.tasks, synthetic_shards))



@pytest.mark.parametrize(("value", "bad"), [(1.0, False), (3e30, False), (float("nan"), True), (float("inf"), True),
                                            (-float("inf"), True)])
def test_nonfinite_grads_flags_nan_and_inf_but_not_an_overflowing_norm(value: float, bad: bool) -> None:
    grads = [torch.ones(40, 30), torch.ones(7), torch.ones(5, 5)]
    grads[1][3] = value  # with 3e30 the 2-norm of the tensor overflows (inf) though every element is finite
    assert torch.isfinite(grads[1]).all() != bad
    assert nonfinite_grads(grads).item() == float(bad)
    grads[1][3] = 1.0
    grads[1][4] = 3e30  # two tensors: one overflows, one is bad
    grads[2][0, 0] = value
    assert nonfinite_grads(grads).item() == float(bad)


# ------------------------------------------------------------------------------ configurations
class NoBins:
    num_bins = 0


def small_task(tokenizer, name: str = "caption", **overrides) -> Task:
    """A task built from its schema as train.py builds it (32-pixel images, short texts), plus `overrides`."""
    node = OmegaConf.structured(task_schema(name, TASKS[name]))
    settings = {"image_size": 32, "max_tgt_length": 20, "max_src_length": 80, "generation.max_len_b": 16}
    for key, value in {**settings, **overrides}.items():
        OmegaConf.update(node, key, value)
    return build_task(node, tokenizer)


@pytest.mark.parametrize("name, overrides, no_bins, needle", [
    ("caption", {"image_size": 1024}, False,
     "task.image_size=1024 gives a 64x64 patch grid but model.image_bucket_size=42"),
    ("caption", {"max_tgt_length": 1023}, False,
     "task.max_tgt_length=1023 (+2 special tokens) exceeds model.max_target"),
    ("caption", {"generation.max_len_b": 2000}, False,
     "task.generation.max_len_b=2000 exceeds model.max_target_positions"),
    ("grounding", {}, True, "task: grounding needs <bin_i> location tokens but the tokenizer has 0"),
])
def test_impossible_task_configurations_are_named(name, overrides, no_bins, needle, tokenizer) -> None:
    model_cfg = OFAConfig(image_bucket_size=42, max_target_positions=1024, max_source_positions=1024)
    small_task(tokenizer, name).check(model_cfg, tokenizer)  # the baseline passes
    with pytest.raises(RunConfigError) as err:
        small_task(tokenizer, name, **overrides).check(model_cfg, NoBins() if no_bins else tokenizer)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key, pattern, needle", [
    ("val_shards", "/nowhere/val-{0..3}.tar", "data.val_shards=/nowhere/val-{0..3}.tar: 4 of 4 shard"),
    ("test_shards", "/nowhere/test-*.tar", "data.test_shards=/nowhere/test-*.tar: shard pattern"),
    ("sources.vqa.train_shards", "/nowhere/vqa-{0..1}.tar",
     "data.sources.vqa.train_shards=/nowhere/vqa-{0..1}.tar: 2 of 2 shard"),  # a source's own pattern
])
def test_missing_shards_are_named(key: str, pattern: str, needle: str, synthetic_data_dir: Path) -> None:
    data = OmegaConf.create({"train_shards": f"{synthetic_data_dir}/train-*.tar", "val_shards": None,
                             "test_shards": "/nowhere/unread-*.tar",  # every task names its own
                             "sources": {"caption": {"test_shards": None}, "vqa": {"test_shards": None}}})
    check_shards(data, ["caption", "vqa"])  # the baseline passes
    OmegaConf.update(data, key, pattern)
    if key == "test_shards":
        data.sources.caption = {}  # now read from the shared pattern
    with pytest.raises(RunConfigError) as err:
        check_shards(data, ["caption", "vqa"])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, needle", BAD_CONFIGS)
def test_train_refuses_bad_configs_before_any_work(override: str, needle: str, refused_runs: dict) -> None:
    proc, run_dir, _ = refused_runs[override]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("Seed set to")]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert not (run_dir / "checkpoints").exists()
