"""W&B helpers: offline by default, a table of sample images (boxes drawn) with prediction and references per
task, and the `wandb sync` hint after an offline run.

wandb keeps the images of a logged `wandb.Table` only in the table's `run_table` artifact, staged outside the
run directory, and writes the run's own copy (`files/media/table/*.table.json`) with every image replaced by
the string "Image" (wandb/wandb#4611, reproduced with wandb 0.31 and a two-cell table). `RunMediaTable`
works around it: it first binds its images to the run (PNGs under `files/media/images`) and writes the run
copy with references to them; the artifact copy is unchanged.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

COLUMNS = ["id", "image", "input", "prediction", "references"]
BOX_COLOURS = {"gt": (0, 255, 0), "box": (255, 0, 0)}  # row key -> outline: reference green, prediction red


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


def draw_boxes(picture: Tensor, row: dict) -> np.ndarray:
    """The row's reference (`gt`) and predicted (`box`) boxes drawn on the (H,W,3) uint8 model input; the
    boxes are in original-image pixels, `row["scale"]` = (w_ratio, h_ratio) maps them onto the input."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(picture.numpy())
    sx, sy = row.get("scale", (1.0, 1.0))
    draw = ImageDraw.Draw(image)
    for key, colour in BOX_COLOURS.items():
        if row.get(key) is not None:
            x0, y0, x1, y1 = row[key]
            draw.rectangle([x0 * sx, y0 * sy, x1 * sx, y1 * sy], outline=colour, width=max(1, image.width // 64))
    return np.asarray(image)


@functools.cache
def run_media_table() -> type:
    """`wandb.Table` whose run-file copy references its images (module docstring); built on first use so
    importing this module does not import wandb."""
    import wandb

    class RunMediaTable(wandb.Table):
        _json_run: Any = None  # set while the run copy is written

        def bind_to_run(self, run: Any, key: str, step: Any, *args: Any, **kwargs: Any) -> None:
            for image in self.media_cells():
                image.bind_to_run(run, key, step)
            self._json_run = run
            try:
                super().bind_to_run(run, key, step, *args, **kwargs)
            finally:
                self._json_run = None

        def _to_table_json(self, max_rows: int | None = None, warn: bool = True) -> dict[str, Any]:
            table = super()._to_table_json(max_rows, warn)
            if self._json_run is None:  # the artifact copy: wandb serialises the images itself
                return table
            return {**table, "data": [[self.cell_json(c) for c in row] for row in table["data"]]}

        def cell_json(self, cell: Any) -> Any:
            return cell.to_json(self._json_run) if isinstance(cell, wandb.Image) else cell

        def media_cells(self) -> list[Any]:
            return [c for row in self.data for c in row if isinstance(c, wandb.Image)]

    return RunMediaTable


def table_row(row: dict, picture: Tensor | None) -> list:
    """One table row: id, image (boxes drawn), input text, prediction, references."""
    import wandb

    image = wandb.Image(draw_boxes(picture, row)) if picture is not None else None
    source = row.get("question", row.get("text", ""))
    return [str(row.get("id")), image, source, str(row.get("prediction", "")), " | ".join(row.get("references", []))]


def log_prediction_table(logger: Any, key: str, samples: Sequence[tuple[dict, Tensor | None]],
                         mean: Sequence[float], std: Sequence[float], step: int) -> None:
    """Log the (row, (3,H,W) normalised image or None) samples as a table of images, predictions and
    references (rows are the dicts of `Task.evaluate`)."""
    pictures = [to_uint8_images(im[None], mean, std)[0] if im is not None else None for _, im in samples]
    data = [table_row(row, picture) for (row, _), picture in zip(samples, pictures)]
    logger.experiment.log({key: run_media_table()(columns=COLUMNS, data=data), "trainer/global_step": step})


def log_image_file(logger: Any, key: str, path: str | Path, step: int) -> None:
    """Log a picture file (e.g. a grid of generated images) under `key`."""
    import wandb

    logger.experiment.log({key: wandb.Image(str(path)), "trainer/global_step": step})


def offline_run_dirs(loggers: Sequence[Any]) -> list[Path]:
    """Directories of the offline W&B runs these loggers started (a logger whose run never started has none)."""
    runs = [getattr(lg, "_experiment", None) for lg in loggers if is_wandb_logger(lg)]
    return [Path(run.dir).parent for run in runs if run is not None and getattr(run, "offline", False)]


def print_sync_hint(trainer: Any) -> None:
    """After an offline W&B run, print (rank 0) the command that uploads it."""
    if trainer.is_global_zero:
        for run_dir in offline_run_dirs(trainer.loggers):
            print(f"W&B run saved offline; upload it with: wandb sync {run_dir}", flush=True)
