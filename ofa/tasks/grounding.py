"""Visual grounding (referring expressions) as OFA's `refcoco` (spec §2 box quantisation, §3.4).

Source `' which region does the text " {text} " describe?'` (pre_caption, 80 words). The image is
resized to exactly S×S (aspect not kept) and the box follows it; the target is four bin tokens
`<bin_x0> <bin_y0> <bin_x1> <bin_y1>` + `</s>`, bin = round(coord / max_image_size * (num_bins - 1)).
Decoding: beam 5, exactly four bin tokens; bins are de-quantised and scaled back to original pixels.
Metric: Acc@0.5 with OFA's IoU.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ofa.errors import RunConfigError
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.metrics_understanding import GroundingAccuracy
from ofa.tasks.text import pre_caption

NUM_COORDS = 4


def grounding_generation_defaults() -> GenerationConfig:
    """OFA's RefCOCO generation: beam 5, exactly 4 tokens (evaluate scripts add no_repeat_ngram_size 3)."""
    return GenerationConfig(beam_size=5, min_len=NUM_COORDS, max_len_a=0.0, max_len_b=NUM_COORDS)


@dataclass
class GroundingConfig(TaskConfig):
    """Grounding settings: `image_size` S (the square resize) and `max_image_size` (box normaliser).
    `augment` stays "none" as in OFA: "crop_flip" flips would contradict left/right in the text."""

    image_size: int = 512
    max_image_size: int = 512
    max_src_length: int = 80
    constrain_to_bins: bool = True  # only bin tokens (then </s>) can be generated
    generation: GenerationConfig = field(default_factory=grounding_generation_defaults)


def quantize_boxes(boxes: Tensor, max_image_size: float, num_bins: int) -> Tensor:
    """(..., 4) coords in resized pixels -> bins (..., 4) long: round(c / max_image_size * (num_bins - 1))."""
    bins = torch.round(boxes.double() / max_image_size * (num_bins - 1)).long()
    return bins.clamp(0, num_bins - 1)


def dequantize_boxes(bins: Tensor, max_image_size: float, num_bins: int) -> Tensor:
    """bins (..., 4) -> coords in resized pixels: bin / (num_bins - 1) * max_image_size."""
    return bins.double() / (num_bins - 1) * max_image_size


def to_original(boxes: Tensor, w_ratio: Tensor, h_ratio: Tensor) -> Tensor:
    """Resized-pixel boxes (N, 4) -> original pixels: x / (S/w), y / (S/h)."""
    scale = torch.stack([w_ratio, h_ratio, w_ratio, h_ratio], -1).to(boxes)  # (N, 4)
    return boxes / scale


class BinConstraint:
    """Trie-like constraint for `SequenceGenerator`: four bin tokens, then `</s>`."""

    def __init__(self, bin_offset: int, num_bins: int, eos: int) -> None:
        self.bins = list(range(bin_offset, bin_offset + num_bins))
        self.eos = eos

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        return self.bins if len(prefix) - 1 < NUM_COORDS else [self.eos]  # prefix = [<s>] + generated


class GroundingTask(Task):
    """OFA's `refcoco` task (module docstring)."""

    name = "grounding"
    monitor = "acc"
    config_class = GroundingConfig

    def __init__(self, tokenizer: Any, cfg: GroundingConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.num_bins, self.bin_offset = tokenizer.num_bins, tokenizer.bin_offset

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """Prompt, S×S image, box target as bin tokens; meta keeps the original box and resize ratios."""
        if not raw.get("refs") or raw.get("image") is None:
            return None
        ref = self.pick(raw["refs"], split)
        w, h = raw["image"].size
        pixels, boxes = self.transform(split)(raw["image"], [ref["box"]])  # (3, S, S), (1, 4)
        text = pre_caption(ref["text"], self.cfg.max_src_length)
        source = self.encode_text(f' which region does the text " {text} " describe?', bos=True, eos=True)
        coords = quantize_boxes(boxes[0], self.cfg.max_image_size, self.num_bins) + self.bin_offset  # (4,)
        meta = {"text": text, "box": [float(c) for c in ref["box"]], "width": w, "height": h,
                "w_ratio": self.cfg.image_size / w, "h_ratio": self.cfg.image_size / h}
        return self.make_sample(raw, source, coords, pixels, meta=meta)

    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        """Also: the boxes need `<bin_i>` location tokens in the vocabulary."""
        super().check(model_cfg, tokenizer, prefix)
        if getattr(tokenizer, "num_bins", 0) < 2:
                raise RunConfigError(f"{prefix}: grounding needs <bin_i> location tokens but the tokenizer has "
                                 f"{getattr(tokenizer, 'num_bins', 0)}; use a tokenizer with num_bins > 1 "
                                 "(e.g. tokenizer=ofa)")

    def build_metrics(self) -> dict[str, Any]:
        return {"acc": GroundingAccuracy()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        pred = self.predict_boxes(model, batch)  # (B, 4) original pixels
        metas = batch["meta"]
        gt = torch.tensor([m["box"] for m in metas], dtype=torch.float64)
        metrics["acc"].update(pred, gt)
        return [{"id": i, "text": m["text"], "box": b, "gt": m["box"], "scale": (m["w_ratio"], m["h_ratio"]),
                 "prediction": " ".join(f"{c:.1f}" for c in b), "references": [" ".join(f"{c:.1f}" for c in m["box"])]}
                for i, m, b in zip(batch["id"], metas, pred.tolist())]  # boxes: original pixels; scale: to the input

    def predict_boxes(self, model: torch.nn.Module, batch: dict[str, Any]) -> Tensor:
        """Beam search over bin tokens -> (B, 4) boxes in original-image pixels (float64, CPU)."""
        tok, gen_cfg = self.tokenizer, self.cfg.generation
        if self.cfg.constrain_to_bins:
            gen_cfg = dataclasses.replace(gen_cfg, constraint_range=(self.bin_offset, self.bin_offset + self.num_bins))
        constraint = BinConstraint(self.bin_offset, self.num_bins, tok.eos) if self.cfg.constrain_to_bins else None
        generator = SequenceGenerator(model, gen_cfg, pad=tok.pad, bos=tok.bos, eos=tok.eos)
        hyps = generator.generate(batch["src_tokens"], batch.get("patch_images"), batch.get("patch_masks"),
                                  constraint_trie=constraint)
        bins = torch.stack([self.hypothesis_bins(h[0].tokens if h else torch.zeros(0)) for h in hyps])  # (B, 4)
        boxes = dequantize_boxes(bins, self.cfg.max_image_size, self.num_bins)
        metas = batch["meta"]
        w_ratio = torch.tensor([m["w_ratio"] for m in metas], dtype=torch.float64)
        h_ratio = torch.tensor([m["h_ratio"] for m in metas], dtype=torch.float64)
        return to_original(boxes, w_ratio, h_ratio)

    def hypothesis_bins(self, tokens: Tensor) -> Tensor:
        """First four generated tokens -> bin indices (4,); non-bin tokens clamp into range, missing -> 0."""
        coords = torch.zeros(NUM_COORDS, dtype=torch.long)
        toks = tokens[tokens.ne(self.tokenizer.eos)][:NUM_COORDS].long()
        coords[: toks.numel()] = (toks - self.bin_offset).clamp(0, self.num_bins - 1)
        return coords
