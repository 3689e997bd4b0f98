"""The scale options as configs (no GPU, no cluster here): `trainer=fsdp` builds Lightning's FSDPStrategy (our
`FSDP1Strategy` subclass) with the layers auto-wrapped, activation checkpointing and sharded checkpoints;
`trainer=fsdp2` our FSDP2 strategy; the torchrun and SLURM recipes of docs/SCALE.md give Lightning's TorchElastic /
SLURM environments with every rank where it belongs; the launcher and Optuna options compose to installed plugins;
a tiny Optuna sweep runs."""
from __future__ import annotations

import csv
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import get_class
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import OmegaConf
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from ofa import factory
from ofa.modules.layers import DecoderLayer, EncoderLayer
from ofa.sharding import FSDP1Strategy, FSDP2Strategy
from subprocess_runs import run_command
from test_configs import compose_cfg, data_overrides

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "recipes"


def build_trainer(overrides: list[str], tmp_path: Path) -> pl.Trainer:
    cfg = compose_cfg([*overrides, "logger=none", "callbacks=none"], tmp_path)
    return factory.build_trainer(cfg.trainer, False, [])


def test_fsdp_wraps_and_checkpoints_the_layers(tmp_path: Path) -> None:
    strategy = factory.build_strategy(compose_cfg(["trainer=fsdp"], tmp_path).trainer.strategy)
    assert isinstance(strategy, FSDP1Strategy) and isinstance(strategy, pl.strategies.FSDPStrategy)
    assert strategy._state_dict_type == "sharded" and strategy._writes_folders()  # swapped in atomically
    wrap = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy) and wrap._module_classes == {EncoderLayer, DecoderLayer}
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert checkpointed._module_classes == {EncoderLayer, DecoderLayer}
    assert strategy.kwargs["use_orig_params"] and strategy.kwargs["limit_all_gathers"]  # per-parameter lr groups
    assert str(strategy.sharding_strategy) == "ShardingStrategy.FULL_SHARD"


def test_fsdp2_builds_its_strategy(tmp_path: Path) -> None:
    trainer = build_trainer(["trainer=fsdp2", "trainer.strategy.param_dtype=bfloat16"], tmp_path)
    strategy = trainer.strategy
    assert isinstance(strategy, FSDP2Strategy) and trainer.num_devices == 2 and strategy._save_distributed_checkpoint
    assert strategy.reshard_after_forward and str(strategy.mp_policy.param_dtype) == "torch.bfloat16"
    assert type(strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"  # non-sharded saves stay atomic
    assert strategy._writes_folders()


def recipe_overrides(name: str, data_dir: Path) -> list[str]:
    """The `train.py` overrides of a recipe script (its line starting with `python train.py` or `train.py`),
    GPU settings replaced by CPU ones so that the Trainer builds here, data pointed at the test dataset."""
    text = (RECIPES / name).read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if re.search(r"\btrain\.py\b", ln) and not ln.lstrip().startswith("#"))
    words = shlex.split(line.split("train.py", 1)[1])
    args = [w for w in words if "=" in w and not w.startswith(("hydra.run.dir", "ckpt_path", "${"))]
    args = [re.sub(r"\$\{?(\w+)\}?", "1", a) for a in args]  # shell variables: any value composes
    return [*args, *data_overrides(data_dir), "trainer.accelerator=cpu", "trainer.precision=32-true"]


def test_torchrun_recipe_gives_each_process_its_rank(synthetic_data_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What torchrun sets for the second process of the second node (2 nodes x 2): Lightning takes the ranks from it
    and launches nothing itself."""
    env = {"TORCHELASTIC_RUN_ID": "ofa", "RANK": "3", "GROUP_RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "WORLD_SIZE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    overrides = recipe_overrides("torchrun.sh", synthetic_data_dir)
    trainer = build_trainer([*overrides, "trainer.devices=2", "trainer.num_nodes=2"], tmp_path)
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, TorchElasticEnvironment) and cluster.creates_processes_externally
    assert (cluster.world_size(), cluster.global_rank(), cluster.local_rank(), cluster.node_rank()) == (4, 3, 1, 1)
    assert isinstance(trainer.strategy, FSDP2Strategy)


def test_slurm_recipe_gives_each_task_its_rank(synthetic_data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What srun sets for task 5 of the sbatch recipe's 2 nodes x 4 tasks."""
    sbatch = (RECIPES / "slurm.sbatch").read_text()
    nodes, tasks = (int(re.search(rf"#SBATCH --{k}=(\d+)", sbatch)[1]) for k in ("nodes", "ntasks-per-node"))
    env = {"SLURM_NTASKS": str(nodes * tasks), "SLURM_NTASKS_PER_NODE": str(tasks), "SLURM_JOB_NAME": "ofa",
           "SLURM_JOB_ID": "42", "SLURM_NODELIST": "gpu[01-02]", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    overrides = recipe_overrides("slurm.sbatch", synthetic_data_dir)
    trainer = build_trainer([*overrides, f"trainer.devices={tasks}", f"trainer.num_nodes={nodes}"], tmp_path)
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment) and cluster.creates_processes_externally
    assert (cluster.world_size(), cluster.global_rank(), cluster.local_rank(), cluster.node_rank()) == (8, 5, 1, 1)
    assert cluster.main_address == "gpu01"


@pytest.mark.parametrize("option, target", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")])
def test_launcher_options_point_at_the_installed_plugin(option: str, target: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"launcher={option}", "trainer=fsdp2", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == target and get_class(target)
    if option == "slurm":  # one SLURM task per rank
        assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    else:  # one local process per job: Lightning starts the job's other ranks itself
        assert (launcher["nodes"], launcher["tasks_per_node"]) == (1, 1)


def test_optuna_direction_follows_the_monitor(tmp_path: Path) -> None:
    cfg = compose_cfg(["hparams_search=optuna"], tmp_path)
    assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert cfg.hydra.sweeper.direction == "maximize"  # the mixture's VQA score
    assert compose_cfg(["hparams_search=optuna", "task=image_gen"], tmp_path).hydra.sweeper.direction == "minimize"


@pytest.mark.slow
def test_tiny_optuna_sweep_through_submitit_writes_summary_and_best(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """2 Optuna trials (a random one, then TPE's) of one fast_dev_run batch each, each a submitit job (a separate
    process, as on SLURM): distinct sampled values, one summary row each, the best written."""
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
            "launcher=submitit_local",
            "debug=fdr", "task=caption", "logger=none", f"paths.root_dir={tmp_path}",
            *(o for o in data_overrides(synthetic_data_dir) if not o.startswith("paths.")),
            "model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=1", "model.encoder_attention_heads=2",
            "model.decoder_attention_heads=2", "model.encoder_ffn_dim=64", "model.decoder_ffn_dim=64",
            "task.image_size=32", "task.generation.beam_size=2", "task.generation.max_len_b=4",
            "task.ptb_tokenizer=false", "data.batch_size=4", "data.eval_batch_size=4"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = run_command([sys.executable, str(ROOT / "train.py"), *args], ROOT, env, 300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep_dir,) = (tmp_path / "multirun" / "caption_ofa_nano").iterdir()
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["optim.lr"]) for r in rows]
    assert len(rows) == 2 and len(set(lrs)) == 2 and all(1e-5 <= lr <= 1e-3 for lr in lrs)
    assert all(r["val/caption/cider"] != "" for r in rows)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(best.best_params) == {"optim.lr", "optim.weight_decay", "schedule.warmup_ratio"}
    assert "sweep summary (2 jobs)" in proc.stdout
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2  # each trial ran as a submitit job
