"""Scoring generated images inside a task's evaluation: rerank the samples of a caption, update the image
metrics with the best one, keep a grid of them. The scorers, the judge and the metrics themselves live in
`ofa.tasks.image_scorers`, `ofa.tasks.image_judge` and `ofa.tasks.metrics_image` (docs/IMAGE_EVAL.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ofa.errors import RunConfigError

GRID_CELL = 128  # pixels of one image in a saved grid
GRID_TEXT = 28  # pixels of caption text under it


@dataclass
class ScorerConfig:
    """The CLIP-style scorer that reranks samples: `open_clip` (a model name + a local weights file; OFA used
    OpenAI's ViT-B/16: `model_name=ViT-B-16`, `path=/weights/ViT-B-16.pt`), `synthetic` (the synthetic
    world's scorer, a dir), or `none` (the first sample is kept)."""

    kind: str = "none"  # none | open_clip | synthetic
    path: str | None = None
    model_name: str = "ViT-B-16"


def attributes_of(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The judged attributes of a single-object synthetic image: colour, shape, size and grid cell (0-8,
    row-major), from the record's `objects`; None for other images."""
    objects = raw.get("objects")
    if not isinstance(objects, list) or len(objects) != 1 or not isinstance(objects[0], dict):
        return None
    obj = objects[0]
    cell = obj.get("cell")
    if cell is None and obj.get("box") and raw.get("width"):
        x0, y0, x1, y1 = obj["box"]
        third = float(raw["width"]) / 3
        cell = [min(int((y0 + y1) / 2 / third), 2), min(int((x0 + x1) / 2 / third), 2)]
    if cell is None or not all(k in obj for k in ("color", "shape", "size")):
        return None
    return {"color": obj["color"], "shape": obj["shape"], "size": obj["size"], "cell": int(cell[0]) * 3 + int(cell[1])}


def real_image(raw: dict[str, Any], size: int) -> Tensor | None:
    """The sample's real image at `size` x `size` as uint8 (3, S, S) for FID, None if it has none."""
    image = raw.get("image")
    if not isinstance(image, Image.Image):
        return None
    resized = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


class ImageEvaluator:
    """Loads the scorer / judge / FID extractor on first use; reranks and updates the metrics."""

    def __init__(self, scorer: ScorerConfig, judge: str | None, fid: str, inception_weights: str | None,
                 image_dir: str | None, grid_size: int) -> None:
        if fid not in ("none", "judge", "inception"):
            raise RunConfigError(f"task.fid={fid!r}: expected none, judge or inception")
        if fid == "judge" and not judge:
            raise RunConfigError("task.fid=judge needs task.judge (the judge's directory)")
        if fid == "inception" and not inception_weights:
            raise RunConfigError("task.fid=inception needs task.inception_weights (a local weights file)")
        if scorer.kind not in ("none", "open_clip", "synthetic"):
            raise RunConfigError(f"task.scorer.kind={scorer.kind!r}: expected none, open_clip or synthetic")
        if scorer.kind != "none" and not scorer.path:
            raise RunConfigError(f"task.scorer.kind={scorer.kind} needs task.scorer.path")
        self.scorer_cfg, self.judge_path, self.fid = scorer, judge, fid
        self.inception_weights, self.image_dir, self.grid_size = inception_weights, image_dir, grid_size
        self._scorer: Any = None
        self._judge: Any = None
        self._grid: list[tuple[Tensor, str]] = []

    # ---- the models, loaded once ---------------------------------------------------------------
    def scorer(self) -> Any:
        if self._scorer is None and self.scorer_cfg.kind != "none":
            from ofa.tasks.image_scorers import OpenClipScorer, SyntheticClipScorer

            path = str(Path(self.scorer_cfg.path).expanduser())
            self._scorer = (OpenClipScorer(self.scorer_cfg.model_name, path) if self.scorer_cfg.kind == "open_clip"
                            else SyntheticClipScorer.load(path))
        return self._scorer

    def judge(self) -> Any:
        if self._judge is None and self.judge_path:
            from ofa.tasks.image_judge import ImageJudge

            self._judge = ImageJudge.load(str(Path(self.judge_path).expanduser()))
        return self._judge

    def build_metrics(self) -> dict[str, Any]:
        """clip (with a scorer), judge (with a judge), fid; the extractors are passed lazily."""
        metrics: dict[str, Any] = {}
        if self.scorer_cfg.kind == "none" and not self.judge_path and self.fid == "none":
            return metrics
        from ofa.tasks import metrics_image as mi

        if self.scorer_cfg.kind != "none":
            metrics["clip"] = mi.ClipSimilarity(self.scorer)
        if self.judge_path:
            metrics["judge"] = mi.JudgedAccuracy(self.judge, prefix="judge_")
        if self.fid == "judge":
            metrics["fid"] = mi.fid_metric(mi.JudgeFeatures(self.judge))
        elif self.fid == "inception":
            metrics["fid"] = mi.fid_metric("inception", self.inception_weights)
        return metrics

    # ---- one batch ---------------------------------------------------------------------------------
    @torch.no_grad()
    def rerank(self, images: Tensor, captions: list[str]) -> Tensor:
        """(B, K, 3, H, W) samples -> (B,) index of the best sample of each caption (0 without a scorer)."""
        b, k = images.shape[:2]
        scorer = self.scorer()
        if scorer is None or k == 1:
            return torch.zeros(b, dtype=torch.long)
        texts = [c for c in captions for _ in range(k)]
        return scorer.score(images.flatten(0, 1), texts).view(b, k).argmax(1).cpu()

    def update(self, images: Tensor, captions: list[str], metas: list[dict], metrics: dict[str, Any]) -> Tensor:
        """Rerank, update the metrics with the best images; returns them (B, 3, H, W) in [0, 1]."""
        best = images[torch.arange(images.size(0)), self.rerank(images, captions)]  # (B, 3, H, W)
        if "clip" in metrics:
            metrics["clip"].update(best, captions)
        if "judge" in metrics:
            rows = [i for i, m in enumerate(metas) if m.get("attributes")]
            if rows:
                metrics["judge"].update(best[rows], [metas[i]["attributes"] for i in rows])
        if "fid" in metrics:
            real = [m["real"] for m in metas if m.get("real") is not None]
            if real:
                metrics["fid"].update(torch.stack(real), real=True)
            metrics["fid"].update(best.mul(255).round().to(torch.uint8), real=False)
        room = self.grid_size - len(self._grid)
        self._grid.extend(zip(best[:max(room, 0)], captions[:max(room, 0)]))
        return best

    def write_grid(self, split: str, step: int) -> Path | None:
        """Save the evaluation's grid (`image_dir/<split>-step<step>.png`) and forget it; its path or None."""
        grid, self._grid = self._grid, []
        if not grid or not self.image_dir:
            return None
        path = Path(self.image_dir).expanduser() / f"{split}-step{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(grid).save(path)
        return path


def captioned_grid(items: list[tuple[Tensor, str]], cols: int = 4) -> Image.Image:
    """A grid of (3, H, W) images in [0, 1], each with its caption underneath."""
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * GRID_CELL, rows * (GRID_CELL + GRID_TEXT)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(items):
        x, y = (i % cols) * GRID_CELL, (i // cols) * (GRID_CELL + GRID_TEXT)
        pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        sheet.paste(Image.fromarray(pixels).resize((GRID_CELL, GRID_CELL), Image.Resampling.NEAREST), (x, y))
        lines, line = ["", ""], 0
        for w in caption.split():  # two short lines of the caption, in order
            line = 1 if line or len(lines[0]) + len(w) >= 22 else 0
            lines[line] = f"{lines[line]} {w}".strip()
        draw.text((x + 2, y + GRID_CELL + 1), "\n".join(lines), fill="black")
    return sheet
