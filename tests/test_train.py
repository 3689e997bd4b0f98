"""The real entry point, as a subprocess: fast_dev_run, W&B offline, checkpoints and resume, validate,
init_from, config errors, sweeps (`-m`, `hparams_search`) and their summary, shard patterns as the docs type
them (quoted: trains; unquoted: refused). A 2-process CPU DDP run's batch counts per rank, validation and test:
test_sharding.py (the replicated run beside FSDP2's)."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subprocess_runs import run_command, run_concurrently, shell_words

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per run: a hang (e.g. on the network) fails the test instead of blocking CI
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64)
TINY_MODEL = [f"model.{k}={v}" for k, v in TINY.items()]
FAST = ["task.image_size=32", "task.generation.beam_size=2", "task.generation.max_len_b=4",
        "task.ptb_tokenizer=false", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
        "data.shuffle_buffer=8", "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1",
        "callbacks.progress_bar.refresh_rate=1"]


def base_overrides(data_dir: Path, run_dir: Path) -> list[str]:
    return [f"hydra.run.dir={run_dir}", "task=caption", "data.synthetic_dir=null",  # the default is the mixture
            f"data.train_shards={data_dir}/train-*.tar", f"data.val_shards={data_dir}/val-*.tar",
            f"data.test_shards={data_dir}/test-*.tar", f"tokenizer.path={data_dir}/tokenizer.json",
            *TINY_MODEL, *FAST]


def run_train(args: list[str], env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = run_command([sys.executable, str(ROOT / "train.py"), *args], ROOT, full_env, TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def rank_counts(output: str) -> dict[int, tuple[int, int]]:
    found = re.findall(r"\[rank (\d+)/\d+\] train batches: (\d+), optimizer steps: (\d+)", output)
    return {int(r): (int(b), int(s)) for r, b, s in found}


def test_fast_dev_run_writes_metrics_json(synthetic_data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "fdr"
    proc = run_train(base_overrides(synthetic_data_dir, run_dir) + ["debug=fdr", "logger=csv"])
    metrics = read_metrics(run_dir)
    assert {"val/caption/cider", "val/caption/loss", "test/caption/cider", "test/caption/bleu4"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert "final metrics" in proc.stdout and "val/caption/cider" in proc.stdout


@pytest.mark.slow
def test_wandb_offline_checkpoints_and_resume(synthetic_data_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    short = ["trainer.max_epochs=1", "data.batches_per_epoch=2", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1"]
    proc = run_train(base_overrides(synthetic_data_dir, first) + short + ["logger=wandb"],
                     env={"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40})  # a key, still no network
    assert list((first / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    assert list((first / "wandb").glob("offline-run-*/files/media/table/val/caption/samples_*.table.json"))
    assert rank_counts(proc.stdout)[0] == (2, 2)
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file() and (first / "checkpoints" / "best.ckpt").is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert {"val/caption/cider", "test/caption/cider"} <= set(read_metrics(first))

    second = tmp_path / "second"
    proc = run_train(base_overrides(synthetic_data_dir, second) + short +
                     ["logger=csv", f"ckpt_path={last}", "trainer.max_epochs=2"])
    assert rank_counts(proc.stdout)[0] == (4, 4)  # continued from step 2, not restarted
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_unset_wandb_mode_defaults_to_offline() -> None:
    code = ("import os; os.environ.pop('WANDB_MODE', None); from ofa.utils.wandb import default_offline; "
            "default_offline(); print(os.environ['WANDB_MODE'])")
    out = run_command([sys.executable, "-c", code], ROOT, dict(os.environ), timeout=60)
    assert out.stdout.strip() == "offline", out.stderr[-2000:]


def test_validate_stage_and_init_from(synthetic_data_dir: Path, tmp_path: Path, tokenizer) -> None:
    from ofa.checkpoint import save_platform
    from ofa.modules.config import OFAConfig
    from ofa.modules.model import OFAModel

    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY)
    weights = save_platform(OFAModel(cfg), cfg, tmp_path / "pretrained")
    run_dir = tmp_path / "validate"
    run_train(base_overrides(synthetic_data_dir, run_dir) + ["stage=validate", f"init_from={weights}",
                                                              "logger=none", "trainer.limit_val_batches=1"])
    metrics = read_metrics(run_dir)
    assert "val/caption/cider" in metrics and not any(k.startswith("test/") for k in metrics)


CONFIG_ERRORS = [("model.d_modl=3", "d_modl"), ("model=ofa_gigantic", "ofa_nano"),
                 ("trainer.max_epochs=abc", "trainer.max_epochs")]


@pytest.fixture(scope="module")
def config_error_runs() -> dict[str, subprocess.CompletedProcess]:
    """train.py with each bad override, two at a time."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = run_concurrently([[sys.executable, str(ROOT / "train.py"), o] for o, _ in CONFIG_ERRORS], ROOT, env)
    return {o: p for (o, _), p in zip(CONFIG_ERRORS, procs)}


@pytest.mark.parametrize("override, needle", CONFIG_ERRORS)
def test_config_errors_print_one_line_and_exit_2(override: str, needle: str, config_error_runs: dict) -> None:
    proc = config_error_runs[override]
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error:") and needle in lines[0]


def train_env() -> dict:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def rooted_overrides(data_dir: Path, root: Path) -> list[str]:
    """base_overrides with outputs under `root` (`paths.root_dir`) and Hydra's own run and sweep dirs."""
    return [f"paths.root_dir={root}", "logger=none",
            *(o for o in base_overrides(data_dir, root) if not o.startswith("hydra."))]


def shell(typed: str, args: list[str]) -> list[str]:
    """`python train.py TYPED ARGS`: TYPED made into words by bash as when a user types it (as the docs write
    it: quotes, brace expansion), ARGS (the tiny model and data) as they are."""
    return [sys.executable, str(ROOT / "train.py"), *shell_words(typed), *args]


SWEEPS = {"-m optim.lr=1e-5,3e-5": [1e-5, 3e-5], "hparams_search=lr": [1e-4, 3e-4, 1e-3]}


@pytest.fixture(scope="module")
def sweep_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each documented sweep command (fast_dev_run jobs), two at a time: name -> (process, root dir).
    Neither overrides hydra.sweep.dir: the sweep dir is the one the docs promise, under paths.root_dir."""
    roots = {name: tmp_path_factory.mktemp("sweep") for name in SWEEPS}
    cmds = [shell(n, [*rooted_overrides(synthetic_data_dir, roots[n]), "debug=fdr"]) for n in SWEEPS]
    return {n: (p, roots[n]) for n, p in zip(SWEEPS, run_concurrently(cmds, ROOT, train_env()))}


@pytest.mark.parametrize("command", list(SWEEPS))
def test_sweep_writes_one_summary_of_every_job(command: str, sweep_runs: dict) -> None:
    proc, root = sweep_runs[command]
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep_dirs = list((root / "multirun" / "caption_ofa_nano").iterdir())
    assert len(sweep_dirs) == 1, sweep_dirs  # multirun/<run_name>/<time>/, one for the whole sweep
    jobs = sorted(p.parent.name for p in sweep_dirs[0].glob("*/metrics.json"))
    assert jobs == [str(i) for i in range(len(SWEEPS[command]))]
    with (sweep_dirs[0] / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["optim.lr"]) for r in rows] == SWEEPS[command]
    assert all(float(r["val/caption/loss"]) > 0 and r["test/caption/cider"] != "" for r in rows)
    assert f"sweep summary ({len(rows)} jobs) written to {sweep_dirs[0] / 'summary.csv'}" in proc.stdout
    assert re.search(r"^job\s+optim\.lr\s+val/caption/bleu4", proc.stdout, flags=re.M)


def test_a_run_too_short_to_validate_says_so(synthetic_data_dir: Path, tmp_path: Path) -> None:
    from ofa.utils.report import NO_METRICS_NOTE

    run_dir = tmp_path / "short"
    proc = run_train(base_overrides(synthetic_data_dir, run_dir) + [
        "logger=none", "trainer.max_epochs=1", "data.batches_per_epoch=1", "trainer.limit_val_batches=0",
        "test_after_fit=false"])
    assert read_metrics(run_dir) == {"note": NO_METRICS_NOTE}
    assert f"final metrics: {NO_METRICS_NOTE}" in proc.stdout


@pytest.fixture(scope="module")
def shard_pattern_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The documented shard pattern typed quoted (trains) and unquoted (refused), two at a time."""
    root = tmp_path_factory.mktemp("pattern")
    pattern = f"{synthetic_data_dir}/train-{{000000..000005}}.tar"  # the fixture's 6 training shards
    args = [o for o in rooted_overrides(synthetic_data_dir, root) if not o.startswith("data.train_shards=")]
    args.append("debug=fdr")
    cmds = [shell(shlex.quote(f"data.train_shards={pattern}"), args), shell(f"data.train_shards={pattern}", args)]
    quoted, unquoted = run_concurrently(cmds, ROOT, train_env())
    return {"quoted": quoted, "unquoted": unquoted, "root": root, "pattern": pattern}


def test_a_quoted_brace_pattern_trains_on_every_shard(shard_pattern_runs: dict) -> None:
    proc, root = shard_pattern_runs["quoted"], shard_pattern_runs["root"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = (root / "outputs" / "caption_ofa_nano").iterdir()
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"train_shards: {shard_pattern_runs['pattern']}" in config
    assert "val/caption/cider" in read_metrics(run_dir)


def test_an_unquoted_brace_pattern_is_refused_on_one_line(shard_pattern_runs: dict) -> None:
    proc = shard_pattern_runs["unquoted"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("config error: data.train_shards given 6 times: quote the brace pattern")
    assert lines[0].endswith(f"'data.train_shards={shard_pattern_runs['pattern']}'")
