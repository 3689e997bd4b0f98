"""Caption metrics: BLEU, METEOR, ROUGE-L and CIDEr-D from pycocoevalcap, as a torchmetrics `Metric`.

pycocoevalcap's `Cider` is the coco-caption CIDEr-D (Gaussian length penalty σ=6, clipped n-gram counts,
×10), with document frequencies taken from the references being scored (coco_eval.py's setting; OFA's
in-training validation used cached COCO-val frequencies instead). Scores are on pycocoevalcap's scale
(CIDEr-D 0.6 = "60" in papers). The PTB tokenizer and METEOR run Java; METEOR costs ≈9 s a call, so it
can be switched off for quick runs.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ofa.tasks.text import strip_punctuation

ALL_SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def tokenize_captions(captions: dict[str, list[str]], ptb: bool = True) -> dict[str, list[str]]:
    """PTB-tokenize (Java, lower-cased, punctuation dropped) or lower-case + strip punctuation + split."""
    if not ptb:
        return {k: [strip_punctuation(c.lower()) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def coco_caption_scores(
    hypotheses: dict[str, str], references: dict[str, list[str]], meteor: bool = True, ptb: bool = True
) -> dict[str, float]:
    """Corpus scores of one hypothesis per id against its references (ids must match)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if hypotheses.keys() != references.keys():
        raise ValueError("caption scores: hypotheses and references have different ids")
    if not hypotheses:
        return {name: 0.0 for name in ALL_SCORES if meteor or name != "meteor"}
    res = tokenize_captions({k: [h] for k, h in hypotheses.items()}, ptb)
    gts = tokenize_captions(references, ptb)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)}
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        scores["meteor"] = _meteor(gts, res)
    return scores


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts a JVM; its __del__ stops it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return float(scorer.compute_score(gts, res)[0])
    finally:
        del scorer


class CaptionScores(Metric):
    """Collects (id, hypothesis, references) on every rank; `compute` gathers them and scores once.

    Records travel as UTF-8 JSON bytes in a list state, so torchmetrics' own sync gathers them (uneven
    lengths are padded); duplicates of an id (padded distributed samplers) are scored once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        meteor: bool = True,
        ptb_tokenizer: bool = True,
        keys: Sequence[str] = ("cider", "bleu4", "meteor", "rouge_l"),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.meteor, self.ptb_tokenizer = meteor, ptb_tokenizer
        self.keys = [k for k in keys if meteor or k != "meteor"]
        self.add_state("records", default=[], dist_reduce_fx="cat")

    def update(self, ids: Sequence, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        for sample_id, hyp, refs in zip(ids, hypotheses, references, strict=True):
            data = json.dumps([str(sample_id), hyp, list(refs)]).encode() + b"\0"
            # float32 keeps every byte exact and matches torchmetrics' empty-rank placeholder dtype
            self.records.append(torch.tensor(list(data), dtype=torch.float32, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        hyps, refs = self.decoded()
        scores = coco_caption_scores(hyps, refs, meteor=self.meteor, ptb=self.ptb_tokenizer)
        return {k: torch.tensor(scores[k]) for k in self.keys}

    def decoded(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """All records seen (after sync: on every rank) as `{id: hypothesis}`, `{id: references}`."""
        records = self.records
        if isinstance(records, list):
            records = dim_zero_cat(records) if records else torch.zeros(0)
        raw = bytes(records.to(torch.uint8).tolist())
        hyps: dict[str, str] = {}
        refs: dict[str, list[str]] = {}
        for chunk in raw.split(b"\0"):
            if chunk:
                sample_id, hyp, sample_refs = json.loads(chunk)
                hyps[sample_id], refs[sample_id] = hyp, sample_refs
        return hyps, refs
