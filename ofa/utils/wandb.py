"""W&B helpers: offline by default, and a table of sample images with predicted and reference captions."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def default_offline() -> None:
    """Never let a run block on the network: W&B is offline unless the user chose otherwise."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    os.environ.setdefault("WANDB_SILENT", "true")


def is_wandb_logger(logger: Any) -> bool:
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover - wandb is a dependency
        return False
    return isinstance(logger, WandbLogger)


def to_uint8_images(patch_images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the normalisation: (B,3,H,W) float -> (B,H,W,3) uint8."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = patch_images.detach().float().cpu() * std_t + mean_t  # (B,3,H,W) in [0,1]
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def log_prediction_table(logger: Any, key: str, rows: Sequence[dict], images: Tensor | None,
                         mean: Sequence[float], std: Sequence[float], step: int) -> None:
    """Log `rows` (dicts with id/prediction/references) and their images as a `wandb.Table`."""
    import wandb

    columns = ["id", "image", "prediction", "references"]
    pictures = to_uint8_images(images, mean, std) if images is not None else None
    data = []
    for i, row in enumerate(rows):
        image = wandb.Image(pictures[i].numpy()) if pictures is not None else None
        data.append([str(row.get("id")), image, row.get("prediction", ""),
                     " | ".join(row.get("references", []))])
    logger.experiment.log({key: wandb.Table(columns=columns, data=data), "trainer/global_step": step})
