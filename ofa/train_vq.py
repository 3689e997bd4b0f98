"""Train the VQ image tokenizer: `ofa-train-vq` or `python train_vq.py` [vq=nano|gumbel_f8] [key=value ...]
(docs/PLATFORM.md, "The VQ image tokenizer").

Wiring only: config -> synthetic world (on first use) -> `VQDataModule` -> `VQLitModule` -> trainer (the main
entry's `trainer`, `logger` groups and callback classes) -> fit -> a last validation of the final weights ->
the weights as a taming bundle (`model.yaml` + `last.ckpt`, `ofa.vqgan_io.save_vqgan`) in `out_dir`, which
`ofa.vqgan_io.load_vqgan(out_dir)` reads, plus `metrics.json` and Lightning's resumable checkpoints
(`ckpt_path=last`) in Hydra's run dir.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ofa import factory
from ofa.checkpoint_io import resolve_ckpt_path
from ofa.datamodules.synthetic import ensure_synthetic_dataset
from ofa.datamodules.vq_data import VQDataConfig, VQDataModule
from ofa.modules.vqgan import VQGANConfig
from ofa.schemas import PathsConfig, TrainerSchema, callbacks_schema, dataclass_fields, register_schemas
from ofa.train import keep_freed_memory, wants_malloc_keep
from ofa.utils.config_errors import exit_on_config_error, exit_on_fault
from ofa.utils.overrides import prepare_overrides
from ofa.utils.report import collect_metrics, format_table, write_metrics_json
from ofa.utils.wandb import default_offline, print_sync_hint
from ofa.vq_lit_module import AEWarmupConfig, VQLitModule, VQLossConfig, VQOptimConfig
from ofa.vqgan_io import save_vqgan

CONF_DIR = Path(__file__).resolve().parent / "conf"
PICTURE = "reconstructions.png"  # the last validation's picture, copied beside the weights

VQSchema = dataclasses.make_dataclass(
    "VQSchema", dataclass_fields(VQGANConfig, defaults={"temperature_scheduler_config": None}))
CallbacksSchema = callbacks_schema()


@dataclass
class VQModuleSchema:
    """`VQLitModule`'s own arguments."""

    log_images: int = 8  # images per validation group in the reconstruction picture
    image_dir: Optional[str] = None  # where the pictures go (null: no picture)


@dataclass
class TrainVQSchema:
    """`conf/train_vq.yaml`: every node typed by the dataclass its values feed."""

    seed: int = 0
    torch_threads: Optional[int] = None  # torch.set_num_threads (null: torch's default, one per core)
    run_name: str = "vq"
    ckpt_path: Optional[str] = None  # resume: a Lightning .ckpt of a run, or `last`
    out_dir: str = MISSING  # the taming bundle of the final weights
    synthetic_dir: Optional[str] = None  # generated on first use (null: your own shards only)
    paths: PathsConfig = field(default_factory=PathsConfig)
    vq: VQSchema = field(default_factory=VQSchema)
    loss: VQLossConfig = field(default_factory=VQLossConfig)
    optim: VQOptimConfig = field(default_factory=VQOptimConfig)
    warmup: AEWarmupConfig = field(default_factory=AEWarmupConfig)
    data: VQDataConfig = field(default_factory=VQDataConfig)
    module: VQModuleSchema = field(default_factory=VQModuleSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: Any = None
    callbacks: Optional[CallbacksSchema] = None


def register_vq_schemas() -> None:
    """The main entry's schemas (logger options use them) plus `train_vq_schema`."""
    register_schemas()
    ConfigStore.instance().store(name="train_vq_schema", node=TrainVQSchema)


def build_module(cfg: DictConfig) -> VQLitModule:
    model_cfg = VQGANConfig.from_dict(factory.plain(cfg.vq))
    return VQLitModule(model_cfg, factory.typed(cfg.loss), factory.typed(cfg.optim), factory.typed(cfg.warmup),
                       **factory.plain(cfg.module))


def export(module: VQLitModule, trainer: pl.Trainer, metrics: dict, out_dir: str | Path) -> Path:
    """The final weights as a taming bundle (+ the last reconstruction picture) in `out_dir`."""
    extra = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "val_metrics": metrics}
    out = save_vqgan(module.model, module.model_cfg, out_dir, extra=extra)
    picture = getattr(module, "last_picture", None)
    if picture is not None and Path(picture).is_file():
        shutil.copyfile(picture, out / PICTURE)
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_vq")
@exit_on_fault()
def train_vq(cfg: DictConfig) -> float | None:
    """One run; returns `val/psnr` (the objective for sweepers)."""
    pl.seed_everything(cfg.seed, workers=True)
    if wants_malloc_keep(str(cfg.trainer.get("accelerator", "auto"))):
        keep_freed_memory()  # CPU: no page faults for the big per-step tensors (as ofa/train.py)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    cfg.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)
    if cfg.synthetic_dir:
        ensure_synthetic_dataset(cfg.synthetic_dir)
    datamodule = VQDataModule(factory.typed(cfg.data))
    module = build_module(cfg)
    logger = factory.build_logger(cfg.logger)
    trainer = factory.build_trainer(cfg.trainer, logger, factory.build_callbacks(cfg.callbacks))
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    if module.validated_at_step != trainer.global_step:  # the metrics and picture are of the final weights
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = collect_metrics(trainer.callback_metrics)
    if trainer.is_global_zero:
        out = export(module, trainer, metrics, cfg.out_dir)
        print(format_table(metrics))
        print(f"metrics written to {write_metrics_json(metrics, Path(cfg.paths.output_dir) / 'metrics.json')}")
        print(f"VQGAN written to {out} (model.yaml + last.ckpt; ofa.vqgan_io.load_vqgan reads it)", flush=True)
    print_sync_hint(trainer)
    return metrics.get("val/psnr")


def main() -> None:
    """The `ofa-train-vq` console script (and `python train_vq.py`)."""
    default_offline()
    register_vq_schemas()
    with exit_on_config_error(), exit_on_fault():
        sys.argv = [sys.argv[0], *prepare_overrides(sys.argv[1:])]
        train_vq()


if __name__ == "__main__":
    main()
