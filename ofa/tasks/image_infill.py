"""Image infilling, OFA's vision pretraining task (spec §3.11 `process_pure_image`, §7, §9).

The image (OFA: stored at 256 x 256, no resize; here resized to `image_size`) is normalised and its central
half (pixels `S/4 .. 3S/4 - 1` in both directions: rows/cols 64..191 of 256) set to 0, mid-grey after
normalisation. Source `<s> what is the image in the middle part? </s>` with that image; target: the
row-major VQGAN codes of the central `S/2 x S/2` crop (OFA: 16 x 16 = 256 codes of the central 128 x 128,
from its image TSV; here the `center_codes` field, `ofa-add-codes --center`) + `</s>`, with `code_mask`,
logits restricted to the code tokens, and `conf` weighting the loss (OFA's pretraining: 2.0).

Evaluation decodes greedily (each step a code) and reports `code_acc`, the fraction of centre codes
restored exactly; with `vqgan` set also `psnr` of the decoded centre against the real one, and a grid of the
infilled images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.image_codes import (check_code_grid, code_grid, code_range, code_tokens, decode_codes,
                                   hypothesis_codes, load_tokenizer_model)
from ofa.tasks.image_eval import captioned_grid


def infill_generation() -> GenerationConfig:
    """Greedy, every step a code (the lengths follow the code grid: `ImageInfillTask.generator`)."""
    return GenerationConfig(beam_size=1, gen_code=True, return_all=False)


@dataclass
class ImageInfillConfig(TaskConfig):
    """Image infilling settings (`task/image_infill.yaml`); the centre is `image_size / 2` pixels square."""

    prompt: str = " what is the image in the middle part?"
    image_size: int = 256
    conf: float = 1.0  # loss weight (OFA's pretraining: 2.0)
    label_smoothing: float = 0.0
    vqgan: str | None = None  # dir with model.yaml + last.ckpt: psnr and pictures in evaluation
    image_dir: str | None = None
    grid_size: int = 16
    generation: GenerationConfig = field(default_factory=infill_generation)


def mask_center(image: Tensor) -> Tensor:
    """(3, S, S) normalised image with its central S/2 x S/2 set to 0 (a copy)."""
    s = image.size(-1)
    out = image.clone()
    out[:, s // 4: s - s // 4, s // 4: s - s // 4] = 0.0
    return out


def center_crop(image: Tensor) -> Tensor:
    """(3, S, S) -> its central (3, S/2, S/2)."""
    s = image.size(-1)
    return image[:, s // 4: s - s // 4, s // 4: s - s // 4]


class ImageInfillTask(Task):
    """Centre-masked image in, the centre's codes out (module docstring)."""

    name = "image_infill"
    monitor = "code_acc"
    config_class = ImageInfillConfig

    def __init__(self, tokenizer: Any, cfg: ImageInfillConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: ImageInfillConfig = cfg
        self.num_codes = code_grid(cfg.image_size // 2) ** 2
        self._grid: list[tuple[Tensor, str]] = []

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """Raw sample with `image` and `center_codes` -> `Sample`; None (skipped, counted) without them."""
        target = code_tokens(raw.get("center_codes"), self.tokenizer, self.num_codes)
        if target is None or raw.get("image") is None:
            return None
        pixels, _ = self.transform(split)(raw["image"])  # (3, S, S)
        meta = {} if split == "train" else {"center": center_crop(pixels)}
        return self.make_sample(raw, self.encode_text(self.cfg.prompt, bos=True, eos=True), target,
                                mask_center(pixels), code_mask=True, conf=self.cfg.conf, meta=meta)

    def constraint_range(self) -> tuple[int, int]:
        return code_range(self.tokenizer, self.cfg.vqgan)

    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        super().check(model_cfg, tokenizer, prefix)
        check_code_grid(prefix, self.cfg.image_size // 2, model_cfg)

    def generator(self, model: nn.Module) -> Any:
        gen = self.cfg.generation
        gen.constraint_range, gen.gen_code = code_range(self.tokenizer, self.cfg.vqgan), True
        gen.min_len, gen.max_len_a, gen.max_len_b = self.num_codes, 0.0, self.num_codes
        return super().generator(model)

    def build_metrics(self) -> dict[str, Any]:
        metrics = {"code_acc": MeanMetric()}
        if self.cfg.vqgan:
            metrics["psnr"] = MeanMetric()
        return metrics

    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        hyps = self.generator(model).generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"],
                                              code_masks=batch["code_masks"])
        codes = torch.stack([hypothesis_codes(h[0].tokens, self.tokenizer, self.num_codes) if h
                             else torch.zeros(self.num_codes, dtype=torch.long) for h in hyps])  # (B, N)
        truth = batch["target"][:, : self.num_codes].cpu() - self.tokenizer.code_offset  # (B, N)
        accuracy = codes.eq(truth).float().mean(1)  # (B,)
        metrics["code_acc"].update(accuracy)
        rows = [{"id": i, "prediction": f"{a:.3f} of the codes", "references": []}
                for i, a in zip(batch["id"], accuracy.tolist())]
        if self.cfg.vqgan:
            self._pictures(codes, batch, metrics, rows)
        return rows

    def _pictures(self, codes: Tensor, batch: dict[str, Any], metrics: dict[str, Any], rows: list[dict]) -> None:
        """Decode the centres, score their PSNR against the real ones, paste them into the masked images."""
        centers = decode_codes(load_tokenizer_model(str(Path(self.cfg.vqgan).expanduser())), codes)  # [0, 1]
        mean = torch.tensor(self.cfg.mean)[:, None, None]
        std = torch.tensor(self.cfg.std)[:, None, None]
        for row, center, meta, image in zip(rows, centers, batch["meta"], batch["patch_images"].cpu()):
            real = (meta["center"] * std + mean).clamp(0, 1)
            center = torch.nn.functional.interpolate(center[None], size=real.shape[-2:], mode="bilinear")[0]
            mse = (center - real).pow(2).mean().clamp(min=1e-10)
            metrics["psnr"].update(10 * torch.log10(1 / mse))
            filled = (image * std + mean).clamp(0, 1)
            s = filled.size(-1)
            filled[:, s // 4: s - s // 4, s // 4: s - s // 4] = center
            row["image"] = filled
            if len(self._grid) < self.cfg.grid_size:
                self._grid.append((filled, str(row["id"])))

    def end_evaluation(self, split: str, step: int) -> Path | None:
        grid, self._grid = self._grid, []
        if not grid or not self.cfg.image_dir:
            return None
        path = Path(self.cfg.image_dir).expanduser() / f"{split}-step{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(grid).save(path)
        return path
