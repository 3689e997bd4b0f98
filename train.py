"""Train / validate / test OFA: `python train.py [group=option ...] [key=value ...]` (docs/PLATFORM.md).

Wiring only: config -> tokenizer -> task(s) -> datamodule -> lit module -> trainer -> stage -> a table of
the final val/test metrics and `metrics.json` in Hydra's run dir.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OFA_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ofa import factory  # noqa: E402
from ofa.checkpoint_io import resolve_ckpt_path  # noqa: E402
from ofa.datamodules.shards import check_shards  # noqa: E402
from ofa.schemas import monitor_key, register_schemas  # noqa: E402
from ofa.tasks import Task  # noqa: E402
from ofa.tokenizer import OFATokenizer  # noqa: E402
from ofa.utils.config_errors import exit_on_config_error, exit_on_fault  # noqa: E402
from ofa.utils.report import collect_metrics, format_table, rank_summary, write_metrics_json  # noqa: E402
from ofa.utils.wandb import default_offline  # noqa: E402


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


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_fault()  # inside the job, so Hydra adds no "Error executing job" report
def main(cfg: DictConfig) -> float | None:
    pl.seed_everything(cfg.seed, workers=True)
    cfg.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)  # `last`: this run name's newest
    factory.prepare_data_dir(cfg)  # synthetic world, or defaults derived from the own shards
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    check_shards(cfg.data, tasks)  # a shard pattern without any file
    check_tasks(cfg, tasks, tokenizer)  # e.g. images larger than the model's patch grid
    datamodule = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    logger = factory.build_logger(cfg.logger)
    trainer = factory.build_trainer(cfg.trainer, logger, factory.build_callbacks(cfg.callbacks))
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    metrics = run_stage(cfg, trainer, module, datamodule)
    if trainer.is_global_zero:
        print(format_table(metrics))
        path = write_metrics_json(metrics, Path(cfg.paths.output_dir) / "metrics.json")
        print(f"metrics written to {path}")
    return metrics.get(monitor_key(cfg.task.name, cfg.task.monitor))  # the objective for sweepers


if __name__ == "__main__":
    default_offline()
    register_schemas()
    with exit_on_config_error(), exit_on_fault():
        main()
