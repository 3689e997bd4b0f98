"""Visual entailment as OFA's `snli_ve` (spec §3.5): answer yes / no / maybe, all-candidate evaluation.

Source (add_caption, the recipes' setting): `' can image and text1 " {premise} " imply text2
" {hypothesis} "?'`, else `' does the image describe " {hypothesis} "?'` (both texts via pre_caption).
prompt_type `prev_output`; a trie over the three labels masks training and scoring; metric: accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ofa.tasks.base import Sample, TaskConfig
from ofa.tasks.candidates import ClosedSetTask
from ofa.tasks.text import pre_caption

LABELS = ("yes", "no", "maybe")
LABEL_WORDS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe", **{w: w for w in LABELS}}


@dataclass
class SNLIVEConfig(TaskConfig):
    """SNLI-VE settings; `max_src_length` truncates premise and hypothesis (words each)."""

    image_size: int = 480
    max_src_length: int = 80
    max_tgt_length: int = 20
    prompt_type: str = "prev_output"
    add_caption: bool = True
    use_constraint: bool = True
    candidate_chunk_size: int = 20


def snli_ve_prompt(hypothesis: str, premise: str | None) -> str:
    """OFA's source text (the premise is used when given, i.e. with add_caption)."""
    if premise is None:
        return f' does the image describe " {hypothesis} "?'
    return f' can image and text1 " {premise} " imply text2 " {hypothesis} "?'


class SNLIVETask(ClosedSetTask):
    """OFA's `snli_ve` task (module docstring)."""

    name = "snli_ve"
    monitor = "acc"
    config_class = SNLIVEConfig

    def candidate_list(self) -> list[str]:
        return list(LABELS)

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        if not raw.get("entailment") or raw.get("image") is None:
            return None
        item = self.pick(raw["entailment"], split)
        label = LABEL_WORDS.get(str(item["label"]).lower())
        if label is None:
            return None
        hypothesis = pre_caption(item["hypothesis"], self.cfg.max_src_length)
        premise = pre_caption(item["premise"], self.cfg.max_src_length) if self.cfg.add_caption else None
        source = self.encode_text(snli_ve_prompt(hypothesis, premise), bos=True, eos=True)
        return self.build_sample(raw, source, label, split, meta={"hypothesis": hypothesis})
