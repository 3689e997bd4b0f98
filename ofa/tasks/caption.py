"""Image captioning (spec §3.2): `tasks/mm_tasks/caption.py` + `data/mm_data/caption_dataset.py` of OFA.

Source `<s> what does the image describe? </s>`; target `" " + caption` with all punctuation removed and
cut to `max_tgt_length` words; evaluation decodes with beam 5, `max_len_b` 16, no 3-gram repeats and scores
against every reference caption (punctuation removed) with CIDEr-D, BLEU-4, METEOR and ROUGE-L.
Stage 2 (`task.scst.enabled`, experiment=caption_stage2_*): SCST with a CIDEr-D reward whose document
frequencies come from the training references (`ofa.tasks.scst`, cached beside the shards).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.losses import N_SPECIALS
from ofa.tasks.metrics import CaptionScores
from ofa.tasks.scst import CiderD, ScstConfig, SelfCriticalLoss, cider_sentence
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
    scst: ScstConfig = field(default_factory=ScstConfig)  # stage 2: CIDEr-D optimisation
    # decode (and draw SCST's candidates from) text tokens only, never `<mask>` / `<code_i>` / `<bin_i>`. OFA decodes
    # the whole vocabulary, which a pretrained model never wanders into; SCST from a model trained from scratch
    # moved a quarter of its captions to image-code tokens (experiments/README.md, "SCST from a base that sees")
    text_only: bool = False


class CaptionTask(Task):
    """Captioning: preprocess raw samples with `captions`, decode and score captions."""

    name = "caption"
    monitor = "cider"
    config_class = CaptionConfig

    def __init__(self, tokenizer: OFATokenizer, cfg: CaptionConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: CaptionConfig = cfg
        self.cider: CiderD | None = None  # SCST's reward: document frequencies of the training references
        if cfg.text_only:  # SequenceGenerator allows the 4 specials and [start, end): the text tokens
            text = (N_SPECIALS, tokenizer.mask)
            self.cfg = replace(cfg, generation=replace(cfg.generation, constraint_range=text),
                               scst=replace(cfg.scst, generation=replace(cfg.scst.generation, constraint_range=text)))

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

    # ---- SCST (stage 2) ----------------------------------------------------------------------
    def prepare_training(self, train_shards: list[str]) -> None:
        if self.cfg.scst.enabled and self.cider is None:
            from ofa.datamodules.references import cached_cider

            self.cider = cached_cider(train_shards, cider_sentence)

    def training_criterion(self) -> SelfCriticalLoss | None:
        if not self.cfg.scst.enabled:
            return None
        tok = self.tokenizer
        return SelfCriticalLoss(self.cfg.scst, self.cider_rewards, pad=tok.pad, bos=tok.bos, eos=tok.eos,
                                constraint_range=self.cfg.scst.generation.constraint_range)

    def cider_rewards(self, candidates: list[list[Tensor]], batch: dict[str, Any]) -> Tensor:
        """CIDEr-D of every candidate against its sample's references: (B, K)."""
        if self.cider is None:
            raise RuntimeError("caption SCST: no document frequencies (prepare_training was not called)")
        rows = []
        for cands, meta in zip(candidates, batch["meta"], strict=True):
            refs = [cider_sentence(r) for r in meta["references"]]
            texts = [cider_sentence(self.tokenizer.decode(c.tolist())) for c in cands]
            rows.append([self.cider.score(t, refs) for t in texts])
        return torch.tensor(rows)

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
