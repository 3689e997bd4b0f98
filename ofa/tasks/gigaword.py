"""Abstractive summarisation as OFA's `gigaword` (spec §3.9): article in, one-line summary out.

Source `<s> what is the summary of article " {article} "? </s>` (pre_caption to `max_src_length` words,
`<unk>` -> `unk`, then the prompted text cut to `max_src_length` BPE tokens); target `pre_caption(summary)`
cut to `max_tgt_length` words, encoded WITHOUT a leading space (as OFA). Training replaces `noise_ratio` of
the decoder-input tokens (never the targets) by random text ids in `[4, <code_0>)` (OFA applies it to
validation batches too; here only training, so validation loss is clean). Decoding: beam 6, length penalty
0.7, `max_len_b` 32, no repeated 3-grams. Metric: ROUGE-1/2/L F1 (`ofa.tasks.metrics_text.RougeF1`: OFA's
hypothesis re-tokenisation, references the lower-cased raw summaries).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.metrics_text import RougeF1
from ofa.tasks.noise import add_target_noise
from ofa.tasks.text import pre_caption


def gigaword_generation() -> GenerationConfig:
    """OFA's Gigaword decoding: `{"beam": 6, "lenpen": 0.7, "max_len_b": 32, "no_repeat_ngram_size": 3}`."""
    return GenerationConfig(beam_size=6, len_penalty=0.7, max_len_b=32, no_repeat_ngram_size=3, return_all=False)


@dataclass
class GigawordConfig(TaskConfig):
    """Summarisation settings; `max_src_length` = article words and prompted-source BPE tokens."""

    prompt: str = ' what is the summary of article " {} "?'
    max_src_length: int = 512
    max_tgt_length: int = 64  # summary words
    noise_ratio: float = 0.2
    generation: GenerationConfig = field(default_factory=gigaword_generation)


class GigawordTask(Task):
    """OFA's `gigaword` task (module docstring)."""

    name = "gigaword"
    monitor = "rougeL"
    config_class = GigawordConfig

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        article, summary = raw.get("text"), raw.get("summary")
        if not isinstance(article, str) or not isinstance(summary, str):
            return None
        article = pre_caption(article, self.cfg.max_src_length).replace("<unk>", "unk")
        target_text = pre_caption(summary, self.cfg.max_tgt_length).replace("<unk>", "unk")
        tok = self.tokenizer
        prompted = tok.encode(self.cfg.prompt.format(article))[: self.cfg.max_src_length]
        source = torch.tensor([tok.bos, *prompted, tok.eos])  # (S,)
        target = self.encode_text(target_text)  # (A,) no leading space, as OFA
        sample = self.make_sample(raw, source, target, None, meta={"reference": summary.lower()})
        if split == "train" and self.cfg.noise_ratio > 0:
            gen = torch.Generator().manual_seed(random.getrandbits(63))  # the stream's private RNG
            noisy = add_target_noise(sample.prev_output_tokens[1:], self.cfg.noise_ratio, 4, tok.code_offset, gen)
            sample = dataclasses.replace(sample, prev_output_tokens=torch.cat([sample.prev_output_tokens[:1], noisy]))
        return sample

    def build_metrics(self) -> dict[str, Any]:
        return {"rouge": RougeF1(gigaword=True)}


    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        hyps = self.generator(model).generate(batch["src_tokens"], batch.get("patch_images"), batch["patch_masks"])
        predictions = [self.tokenizer.decode(h[0].tokens.tolist()).strip() if h else "" for h in hyps]
        references = [m["reference"] for m in batch["meta"]]
        for metric in metrics.values():
            metric.update(predictions, references)
        return [{"id": i, "prediction": p, "references": [r]} for i, p, r in zip(batch["id"], predictions, references)]
