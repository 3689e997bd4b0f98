"""The user's own paths, through the real entry points as subprocesses: a run's own `last.ckpt` reused for
fine-tuning (`init_from=`), testing (`stage=test init_from=`) and conversion (`python -m ofa.checkpoint
convert`, platform and HF); a checkpoint of another size; an export that cannot be written; bad values and
data errors ending a run with one line instead of a traceback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ofa import checkpoint as ck
from ofa.utils.config_errors import worker_error
from subprocess_runs import run_command, run_concurrently
from test_train import ROOT, base_overrides, read_metrics, run_train

SHORT = ["trainer.max_epochs=1", "data.batches_per_epoch=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "logger=none", "model.resnet_layers=null"]  # resnet18 blocks: HF-expressible
BN_STATS = re.compile(r"running_(mean|var)$|num_batches_tracked$")


def env() -> dict:
    out = {**os.environ, "WANDB_MODE": "offline"}
    out.pop("HYDRA_FULL_ERROR", None)
    return out


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def convert_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ofa.checkpoint", "convert", *args]


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The `model.` entries of a Lightning checkpoint (prefix dropped)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def one_error_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    """The run failed with exactly one `prefix` line on stderr and no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in re.split(r"[\r\n]", proc.stderr) if prefix in ln]
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def fitted(synthetic_data_dir: Path, tmp_path_factory) -> Path:
    """A 2-step fit of the tiny model: its run dir, with checkpoints/last.ckpt."""
    run_dir = tmp_path_factory.mktemp("user_paths") / "fit"
    run_train(base_overrides(synthetic_data_dir, run_dir) + SHORT)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture(scope="module")
def reuse_runs(fitted: Path, synthetic_data_dir: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """train.py runs that reuse `last.ckpt`, two at a time: a fine-tune, a fine-tune whose every step is
    skipped (NaN loss: the weights stay those loaded), `stage=test`, and a run of another size."""
    last = fitted / "checkpoints" / "last.ckpt"
    root = fitted.parent
    args = {
        "finetune": ["stage=fit", f"init_from={last}"],
        "skipped": ["stage=fit", f"init_from={last}", "module.debug_nan_steps=[0,1]", "test_after_fit=false"],
        "test": ["stage=test", f"init_from={last}"],
        "other_size": ["stage=fit", f"init_from={last}"],
    }
    cmds = {}
    for name, extra in args.items():
        overrides = base_overrides(synthetic_data_dir, root / name) + SHORT + extra
        if name == "other_size":  # the default ofa_nano instead of the tiny model the checkpoint holds
            overrides = [o for o in overrides if not re.match(r"model\.(d_model|\w+_layers|\w+_heads|\w+_dim)=", o)]
        cmds[name] = train_cmd(overrides)
    procs = run_concurrently(list(cmds.values()), ROOT, env())
    return {name: (root / name, proc) for name, proc in zip(cmds, procs)}


def test_own_checkpoint_carries_model_config_and_tokenizer(fitted: Path, synthetic_data_dir: Path) -> None:
    state = torch.load(fitted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    record = state["ofa"]
    assert record["model_config"]["d_model"] == 32 and record["model_config"]["resnet_layers"] is None
    tok = record["tokenizer"]
    assert tok["kind"] == "trained" and tok["path"] == str(synthetic_data_dir / "tokenizer.json")
    assert tok["sha256"] == ck.text_sha256(tok["json"])


def test_init_from_own_checkpoint_fine_tunes(reuse_runs: dict, fitted: Path) -> None:
    run_dir, proc = reuse_runs["finetune"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2  # a fresh schedule: weights only, not a resume
    before, after = model_weights(fitted / "checkpoints" / "last.ckpt"), model_weights(run_dir / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning changed nothing"
    assert {"val/caption/loss", "test/caption/loss"} <= set(read_metrics(run_dir))


def test_init_from_own_checkpoint_starts_from_its_weights(reuse_runs: dict, fitted: Path) -> None:
    run_dir, proc = reuse_runs["skipped"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = model_weights(fitted / "checkpoints" / "last.ckpt"), model_weights(run_dir / "checkpoints" / "last.ckpt")
    assert before.keys() == after.keys()
    for key in before:  # every step skipped: the weights are the loaded ones (BatchNorm statistics still move)
        if not BN_STATS.search(key):
            assert torch.equal(before[key], after[key]), key


def test_stage_test_init_from_own_checkpoint_reproduces_its_test_loss(reuse_runs: dict, fitted: Path) -> None:
    run_dir, proc = reuse_runs["test"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # fit tested best.ckpt, written with last.ckpt at the only validation: the same weights
    assert read_metrics(run_dir)["test/caption/loss"] == pytest.approx(read_metrics(fitted)["test/caption/loss"],
                                                                        rel=1e-6)


def test_init_from_a_checkpoint_of_another_size_says_which(reuse_runs: dict, fitted: Path) -> None:
    _, proc = reuse_runs["other_size"]
    line = one_error_line(proc, "checkpoint error:")
    assert proc.returncode == 2
    assert line == (f"checkpoint error: {fitted / 'checkpoints' / 'last.ckpt'} holds d_model=32, 1+1 layers "
                    "(a custom size); this run builds ofa_nano (d_model=128, 2+2 layers)")


def test_convert_own_checkpoint_to_platform_and_hf(fitted: Path, tmp_path: Path, synthetic_data_dir: Path) -> None:
    last = fitted / "checkpoints" / "last.ckpt"
    outs = {fmt: tmp_path / fmt for fmt in ("platform", "hf")}
    procs = run_concurrently([convert_cmd(str(last), str(out), "--format", fmt) for fmt, out in outs.items()],
                             ROOT, env())
    for proc in procs:
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reference = ck.load_model(last).state_dict()
    tokenizer_text = (synthetic_data_dir / "tokenizer.json").read_text("utf-8")
    for fmt, out in outs.items():
        assert ck.read_checkpoint(out).meta["format"] == fmt
        loaded = ck.load_model(out).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), fmt
        assert (out / ck.TOKENIZER_FILE).read_text("utf-8") == tokenizer_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "platform"]  # no staging folder left


def test_failed_hf_export_leaves_no_folder(fitted: Path, tmp_path: Path) -> None:
    """ofa_nano's custom ResNet depth cannot be written in the HF port's layout: refused, nothing written."""
    plat = tmp_path / "nano_like"
    ck.convert(fitted / "checkpoints" / "last.ckpt", plat)
    cfg = json.loads((plat / ck.PLATFORM_CONFIG).read_text())
    (plat / ck.PLATFORM_CONFIG).write_text(json.dumps({**cfg, "resnet_layers": [2, 2, 2]}))  # same weights
    proc = run_command(convert_cmd(str(plat), str(tmp_path / "hf"), "--format", "hf"), ROOT, env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unsupported OFA variant: the HF port cannot express custom resnet_layers"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nano_like"]


BAD_VALUES = {"data.batch_size=-4": "config error: data.batch_size=-4: need batch sizes >= 1",
              "optim.lr=-1": "config error: optim.lr=-1.0: must be > 0",
              "tokenizer.path=/nope": "config error: tokenizer.path=/nope",
              "corrupt answers file": "data error: no usable training data for task 'vqa'"}


@pytest.fixture(scope="module")
def bad_value_runs(synthetic_data_dir: Path, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """train.py with each bad value, two at a time; the corrupt candidate file is read in a loader worker."""
    root = tmp_path_factory.mktemp("bad_values")
    answers = root / "answers.json"
    answers.write_text("not json\n")
    cmds = []
    for i, key in enumerate(BAD_VALUES):
        overrides = base_overrides(synthetic_data_dir, root / str(i)) + SHORT
        if key == "corrupt answers file":
            drop = ("task=caption", "task.ptb_tokenizer=false", "data.num_workers=0")
            overrides = [o for o in overrides if o not in drop]
            overrides += ["task=vqa", f"task.answers_file={answers}", "data.num_workers=1"]
        else:
            overrides.append(key)
        cmds.append(train_cmd(overrides))
    return dict(zip(BAD_VALUES, run_concurrently(cmds, ROOT, env())))


@pytest.mark.parametrize("key", list(BAD_VALUES))
def test_bad_values_end_the_run_with_one_line(key: str, bad_value_runs: dict) -> None:
    proc = bad_value_runs[key]
    line = one_error_line(proc, BAD_VALUES[key].split(":")[0] + ":")
    assert line.startswith(BAD_VALUES[key])
    if key == "corrupt answers file":  # names the sample and the shard it came from, and the worker
        assert proc.returncode == 3
        assert re.search(r"vqa sample \S+ of \S+train-\d+\.tar: JSONDecodeError", line), line
        assert line.endswith("(DataLoader worker process 0)")
    else:
        assert proc.returncode == 2


def test_worker_error_is_the_original_last_line() -> None:
    text = ("Caught KeyError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 3, in f\n    raise KeyError(k)\nKeyError: \'image\'\n')
    assert worker_error(RuntimeError(text)) == "KeyError: 'image' (DataLoader worker process 1)"
    assert worker_error(RuntimeError("plain")) is None


def test_config_dataclasses_refuse_bad_values_naming_the_key() -> None:
    from ofa.datamodules.datamodule import LoaderConfig
    from ofa.errors import RunConfigError
    from ofa.utils.optim import OptimConfig, ScheduleConfig

    cases = [(lambda: OptimConfig(betas=(0.9, 1.5)), "optim.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
             (lambda: ScheduleConfig(warmup_steps=-1), "schedule.warmup_steps=-1: must be >= 0"),
             (lambda: LoaderConfig(num_workers=-1), "data.num_workers=-1: need num_workers >= 0")]
    for make, message in cases:
        with pytest.raises(RunConfigError) as err:
            make()
        assert str(err.value) == message
