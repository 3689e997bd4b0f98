"""Train / validate / test OFA: `ofa-train` or `python train.py` [group=option ...] [key=value ...] (docs/PLATFORM.md).

Wiring only: config -> tokenizer -> task(s) -> datamodule -> lit module -> trainer -> stage -> a table of
the final val/test metrics and `metrics.json` in Hydra's run dir. The configs are `ofa/conf` (a link to the
checkout's `conf/`; a copy in an installed wheel), so the same entry point runs from a checkout and from
`pip install`. Outputs and data go under `paths.root_dir`: `$OFA_ROOT` (the root `train.py` sets it to the
checkout), else the current directory.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ofa import factory
from ofa.callbacks.preemption import EXIT_CODE, PreemptionCheckpoint, run_command
from ofa.checkpoint_io import resolve_ckpt_path
from ofa.datamodules.shards import check_shards
from ofa.schemas import monitor_key, register_schemas
from ofa.tasks import Task
from ofa.tokenizer import OFATokenizer
from ofa.utils.config_errors import exit_on_config_error, exit_on_fault
from ofa.utils.overrides import prepare_overrides
from ofa.utils.report import collect_metrics, format_table, rank_summary, write_metrics_json
from ofa.utils.wandb import default_offline, print_sync_hint


def run_stage(cfg: DictConfig, trainer: pl.Trainer, module: pl.LightningModule, dm: pl.LightningDataModule) -> dict:
    """Run `cfg.stage`; after `fit`, also test the best checkpoint. Returns the val/test metrics."""
    if cfg.stage == "fit":
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path, weights_only=True)
        print(rank_summary(trainer), flush=True)
        metrics = collect_metrics(trainer.callback_metrics)
        if cfg.test_after_fit and dm.eval_task_names("test"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True)
            metrics |= collect_metrics(trainer.callback_metrics)
        return metrics
    getattr(trainer, cfg.stage)(module, datamodule=dm, ckpt_path=cfg.ckpt_path, weights_only=True)  # validate/test
    return collect_metrics(trainer.callback_metrics)


def check_tasks(cfg: DictConfig, tasks: dict[str, Task], tokenizer: OFATokenizer) -> None:
    """Refuse impossible model/task/tokenizer combinations before any work, naming the task's config key
    (`task.image_size=...`; in a mixture `task.tasks.<name>.image_size=...`)."""
    model_cfg = factory.typed(cfg.model)
    for name, task in tasks.items():
        task.check(model_cfg, tokenizer, prefix=f"task.tasks.{name}" if cfg.task.get("tasks") else "task")


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and keep its free top (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB).

    By default glibc gives each freed block above 32 MiB back to the kernel, and a CPU training step of OFA
    allocates dozens of those (ResNet activations, logits, the tied embedding's gradients): every step
    page-faults them in afresh (0.5-1 s of system time per ofa_tiny step; +24% steps/s without it, for
    +100-250 MB of peak memory, experiments/README.md). False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        # mallopt's value is a C int: 2**36 (the first version) wrapped to 0, i.e. trim on every free
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def wants_malloc_keep(accelerator: str) -> bool:
    """Keep freed memory for CPU runs, unless `OFA_MALLOC=default` (the C library's own behaviour)."""
    if os.environ.get("OFA_MALLOC", "keep") == "default":
        return False
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def preemption_checkpoint(cfg: DictConfig) -> PreemptionCheckpoint:
    """SIGTERM during fit: `last.ckpt` where `ckpt_path=last` finds it, and this run's command to resume."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    command = run_command(sys.argv[0], overrides)
    return PreemptionCheckpoint(Path(cfg.paths.output_dir) / "checkpoints", command)


CONF_DIR = Path(__file__).resolve().parent / "conf"  # absolute: the same files however this module is run


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@exit_on_fault()  # inside the job, so Hydra adds no "Error executing job" report
def train(cfg: DictConfig) -> float | None:
    """One run (a sweep calls it once per job); returns the monitored metric, the objective for sweepers."""
    pl.seed_everything(cfg.seed, workers=True)
    if wants_malloc_keep(str(cfg.trainer.get("accelerator", "auto"))):
        keep_freed_memory()  # a process setting: before the model's first big tensors
    cfg.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)  # `last`: this run name's newest
    factory.prepare_data_dir(cfg)  # synthetic world, or defaults derived from the own shards
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    check_shards(cfg.data, tasks)  # a shard pattern without any file
    check_tasks(cfg, tasks, tokenizer)  # e.g. images larger than the model's patch grid
    datamodule = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    logger = factory.build_logger(cfg.logger)
    callbacks = [*factory.build_callbacks(cfg.callbacks), preemption_checkpoint(cfg)]
    trainer = factory.build_trainer(cfg.trainer, logger, callbacks)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    try:
        metrics = run_stage(cfg, trainer, module, datamodule)
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt and printed how to resume
        sys.exit(EXIT_CODE)
    if trainer.is_global_zero:
        print(format_table(metrics))
        path = write_metrics_json(metrics, Path(cfg.paths.output_dir) / "metrics.json")
        print(f"metrics written to {path}")
    print_sync_hint(trainer)  # offline W&B: the `wandb sync <dir>` line (rank 0)
    return metrics.get(monitor_key(cfg.task.name, cfg.task.monitor))


def main() -> None:
    """The `ofa-train` console script (and `python train.py`): the command line's overrides, made safe for
    Hydra's grammar (`ofa.utils.overrides`), then `train` under Hydra; config errors end on one line."""
    default_offline()
    register_schemas()
    with exit_on_config_error(), exit_on_fault():
        sys.argv = [sys.argv[0], *prepare_overrides(sys.argv[1:])]
        train()


if __name__ == "__main__":
    main()
