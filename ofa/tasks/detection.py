"""Object detection as sequence generation, OFA's third pretraining extra (spec §3.11 `process_detection`).

Source `<s> what are the objects in the image? </s>`; target: over the boxes left after the augmentation, in
annotation order, `<bin_x0> <bin_y0> <bin_x1> <bin_y1>` + BPE(` {class name}`), then `</s>`; bins
`round(coord / max_image_size * (num_bins - 1))` of the output image. Training: horizontal flip + large-scale
jitter (`ofa.tasks.pretrain_transforms.large_scale_jitter`, OFA: output 256, scale 1.0-1.5); evaluation: the
square resize. An image whose boxes are all cropped away is skipped (counted).

Boxes come from `detections: [{"box": [x0, y0, x1, y1], "label": name}]` (OFA's detection TSV through
`ofa-convert-data detection`) or the synthetic world's `objects` (`{"color", "shape", "box"}`: label
"{color} {shape}"). Evaluation reports the loss only (OFA evaluates no detection metric).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.grounding import quantize_boxes
from ofa.tasks.pretrain_transforms import large_scale_jitter


@dataclass
class DetectionConfig(TaskConfig):
    """Detection settings (OFA's pretraining values; S = 2 x code_image_size = 256)."""

    prompt: str = " what are the objects in the image?"
    image_size: int = 256
    max_image_size: int = 512  # box normaliser (OFA: 512, so bins span ~0..500 of 999 at S = 256)
    jitter_min: float = 1.0
    jitter_max: float = 1.5
    flip: bool = True
    max_objects: int = 30  # boxes kept (in annotation order) so the target fits max_tgt positions
    conf: float = 1.0  # loss weight (OFA's pretraining: 2.0)
    label_smoothing: float = 0.0


def detections(raw: dict[str, Any]) -> list[tuple[list[float], str]]:
    """[(box, label)] of a raw sample: `detections`, else the synthetic world's `objects` dicts."""
    items = raw.get("detections")
    if items:
        return [(list(d["box"]), str(d["label"])) for d in items]
    return [(list(o["box"]), f"{o['color']} {o['shape']}") for o in raw.get("objects") or []
            if isinstance(o, dict) and "box" in o and "shape" in o]


class DetectionTask(Task):
    """Boxes and class names as one target sequence (module docstring)."""

    name = "detection"
    monitor = "loss"
    config_class = DetectionConfig

    def __init__(self, tokenizer: Any, cfg: DetectionConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: DetectionConfig = cfg
        self._jitter = large_scale_jitter(cfg.image_size, cfg.mean, cfg.std, cfg.jitter_min, cfg.jitter_max,
                                          cfg.flip)

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        items = detections(raw)[: self.cfg.max_objects]
        if not items or raw.get("image") is None:
            return None
        boxes = [box for box, _ in items]
        if split == "train":
            pixels, out, kept = self._jitter(raw["image"], boxes)  # (3, S, S), (M, 4), (M,)
        else:
            pixels, out = self.transform(split)(raw["image"], boxes)
            kept = torch.arange(len(items))
        if not len(kept):
            return None
        labels = [items[i][1] for i in kept.tolist()]
        target = self.target_tokens(out, labels)
        meta = {"boxes": out.tolist(), "labels": labels}
        return self.make_sample(raw, self.encode_text(self.cfg.prompt, bos=True, eos=True), target, pixels,
                                conf=self.cfg.conf, meta=meta)

    def target_tokens(self, boxes: Tensor, labels: list[str]) -> Tensor:
        """(M, 4) output-pixel boxes + names -> `<bin>`x4 + BPE(" name") per box (1-D long, no `</s>`)."""
        tok = self.tokenizer
        bins = quantize_boxes(boxes, self.cfg.max_image_size, tok.num_bins) + tok.bin_offset  # (M, 4)
        parts = [torch.cat([b, self.encode_text(f" {label}")]) for b, label in zip(bins, labels)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        super().check(model_cfg, tokenizer, prefix)
        if getattr(tokenizer, "num_bins", 0) < 2:
            raise RunConfigError(f"{prefix}: detection needs <bin_i> location tokens but the tokenizer has "
                                 f"{getattr(tokenizer, 'num_bins', 0)}; use a tokenizer with num_bins > 1")

    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        return []
