"""Image captioning (spec §3.2): `tasks/mm_tasks/caption.py` + `data/mm_data/caption_dataset.py` of OFA.

Source `<s> what does the image describe? </s>`; target `" " + caption` with all punctuation removed and
cut to `max_tgt_length` words; evaluation decodes with beam 5, `max_len_b` 16, no 3-gram repeats and scores
against every reference caption (punctuation removed) with CIDEr-D, BLEU-4, METEOR and ROUGE-L.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.metrics import CaptionScores
from ofa.tasks.text import strip_punctuation
from ofa.tokenizer import OFATokenizer


def caption_generation() -> GenerationConfig:
    """OFA's caption decoding: `{"beam": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}`."""
    return GenerationConfig(beam_size=5, max_len_b=16, no_repeat_ngram_size=3, return_all=False)


@dataclass
class CaptionConfig(TaskConfig):
    """Caption settings (`task/caption.yaml`); `max_tgt_length` counts words."""

    prompt: str = " what does the image describe?"
    generation: GenerationConfig = field(default_factory=caption_generation)
    meteor: bool = True  # ≈9 s of Java per evaluation: switch off for quick runs
    ptb_tokenizer: bool = True  # coco-caption's Java PTB tokenizer; False = lower-case + split


class CaptionTask(Task):
    """Captioning: preprocess raw samples with `captions`, decode and score captions."""

    name = "caption"
    monitor = "cider"
    config_class = CaptionConfig

    def __init__(self, tokenizer: OFATokenizer, cfg: CaptionConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: CaptionConfig = cfg

    # ---- data side -------------------------------------------------------------------------
    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """Raw sample -> `Sample`; None (skipped, counted by the loader) without image or captions."""
        captions = [c for c in raw.get("captions") or [] if isinstance(c, str) and c.strip()]
        if not captions or raw.get("image") is None:
            return None
        words = strip_punctuation(self.pick(captions, split)).split()
        target_text = " ".join(words[: self.cfg.max_tgt_length] if split == "train" else words)
        pixels, _ = self.transform(split)(raw["image"])  # (3, S, S)
        return self.make_sample(raw, self.encode_text(self.cfg.prompt, bos=True, eos=True),
                                self.encode_text(" " + target_text), pixels,
                                meta={"references": [strip_punctuation(c) for c in captions]})

    # ---- evaluation side -------------------------------------------------------------------
    def build_metrics(self) -> dict[str, CaptionScores]:
        return {"coco": CaptionScores(meteor=self.cfg.meteor, ptb_tokenizer=self.cfg.ptb_tokenizer)}


    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        """Beam-search captions for the batch, update the caption scores, return the predictions."""
        hyps = self.generator(model).generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
        predictions = [strip_punctuation(self.tokenizer.decode(h[0].tokens.tolist())) if h else "" for h in hyps]
        references = [m["references"] for m in batch["meta"]]
        for metric in metrics.values():
            metric.update(batch["id"], predictions, references)
        return [{"id": i, "prediction": p, "references": r}
                for i, p, r in zip(batch["id"], predictions, references, strict=True)]
