"""Text infilling, OFA's language pretraining task (spec §3.11): restore a text whose word spans are masked.

The text (lower-cased) is encoded with a leading space, cut to 512 BPE tokens and then to its LAST
`max_text_tokens` (256); BART whole-word span masking (`ofa.tasks.noise.text_infilling`: 30 % of the words,
Poisson(3) span lengths, one `<mask>` per span, zero-length spans inserted as `<mask>`) gives the masked
text. Source `<s> what is the complete text of " {masked} "? </s>` (built on token ids, as OFA: the masked
ids sit between the prompt's `"` tokens; with OFA's BPE the ids equal OFA's `prefix[:-2] + masked +
prefix[-2:]`); target: the whole unmasked text. `conf` weights the loss (OFA's
pretraining: 2.0). Training draws fresh masks each time; evaluation masks each sample the same way every
time (seeded by its id). Metrics: `exact` (the whole text restored) and ROUGE-1/2/L F1 of the restored text.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.metrics_text import RougeF1
from ofa.tasks.metrics_understanding import ExactMatchAccuracy
from ofa.tasks.noise import text_infilling, word_start_table


def infill_generation() -> GenerationConfig:
    """Beam 5; the restored text is at most 1.5x the source + 16 tokens long."""
    return GenerationConfig(beam_size=5, max_len_a=1.5, max_len_b=16, return_all=False)


@dataclass
class TextInfillConfig(TaskConfig):
    """Text infilling settings (OFA's pretraining values)."""

    prompt: str = ' what is the complete text of " {} "?'  # {}: the masked text's token ids
    max_src_length: int = 512  # BPE tokens of the text before keeping the last `max_text_tokens`
    max_text_tokens: int = 256
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    replace_length: int = 1
    random_ratio: float = 0.0
    conf: float = 1.0  # loss weight (OFA's pretraining: 2.0)
    label_smoothing: float = 0.0
    generation: GenerationConfig = field(default_factory=infill_generation)


class TextInfillTask(Task):
    """Text infilling as a task of its own (module docstring)."""

    name = "text_infill"
    monitor = "rougeL"
    config_class = TextInfillConfig

    def __init__(self, tokenizer: Any, cfg: TextInfillConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.word_starts = word_start_table(tokenizer)  # (V,) bool
        head, tail = cfg.prompt.split("{}")  # the masked ids (which start with a space) go between them
        self.prompt_head, self.prompt_tail = tokenizer.encode(head.rstrip(" ")), tokenizer.encode(tail)

    def mask(self, text: Tensor, split: str, sample_id: str) -> Tensor:
        """(N+2,) `<s> text </s>` -> the masked sequence, still between `<s>` and `</s>`."""
        seed = random.getrandbits(63) if split == "train" else zlib.crc32(sample_id.encode())
        cfg = self.cfg
        random_range = (4, self.tokenizer.mask)
        return text_infilling(text, self.word_starts, self.tokenizer.mask, cfg.mask_ratio, cfg.poisson_lambda,
                              cfg.replace_length, cfg.random_ratio, random_range,
                              torch.Generator().manual_seed(seed))

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            return None
        tok = self.tokenizer
        ids = tok.encode(" " + text.strip().lower())[: self.cfg.max_src_length][-self.cfg.max_text_tokens:]
        full = torch.tensor([tok.bos, *ids, tok.eos])  # (N+2,)
        sample_id = str(raw.get("id", raw.get("__key__", "")))
        masked = self.mask(full, split, sample_id)[1:-1]  # (M,)
        source = torch.cat([torch.tensor([tok.bos, *self.prompt_head]), masked,
                            torch.tensor([*self.prompt_tail, tok.eos])])  # (S,)
        return self.make_sample(raw, source, full[1:-1], None, conf=self.cfg.conf,
                                meta={"text": tok.decode(ids).strip(), "masked": masked.tolist()})

    def build_metrics(self) -> dict[str, Any]:
        return {"exact": ExactMatchAccuracy(), "rouge": RougeF1(gigaword=False)}


    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        hyps = self.generator(model).generate(batch["src_tokens"], batch.get("patch_images"), batch["patch_masks"])
        predictions = [self.tokenizer.decode(h[0].tokens.tolist()).strip() if h else "" for h in hyps]
        references = [m["text"] for m in batch["meta"]]
        for metric in metrics.values():
            metric.update(predictions, references)
        return [{"id": i, "prediction": p, "references": [r]} for i, p, r in zip(batch["id"], predictions, references)]
