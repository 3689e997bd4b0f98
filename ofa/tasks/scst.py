"""Self-critical sequence training (SCST, spec §4.2-4.3): optimise a sequence-level reward directly.

OFA's `scst_reward_criterion`: decode K candidates per sample with the model in eval mode and no gradient
(beam 5 keeping all 5 finished hypotheses, or K samples), score each (CIDEr-D against the references with
document frequencies of the training references; a CLIP-style similarity for text-to-image), subtract the
leave-one-out baseline (the mean reward of the sample's other K-1 candidates), then teacher-force the
candidates in train mode (`prev = <s> + hyp`, `target = hyp` incl. `</s>`) and minimise
`-sum_t log p(y_t) * advantage` over their tokens, no label smoothing; the caller divides by the
candidates' tokens (`sample_size = ntokens`). Under DDP every rank scores its own candidates: nothing is
gathered beyond the token count that normalises the gradients.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.tasks.losses import LossOutput, mask_outside_range
from ofa.tasks.text import strip_punctuation

RewardFn = Callable[[list[list[Tensor]], dict[str, Any]], Tensor]  # candidates (B x K), batch -> (B, K)


def scst_generation() -> GenerationConfig:
    """OFA's `scst_generator`: `{"beam": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}`, all 5 hypotheses."""
    return GenerationConfig(beam_size=5, max_len_b=16, no_repeat_ngram_size=3, return_all=True)


@dataclass
class ScstConfig:
    """`task.scst`: train with SCST instead of cross-entropy (caption stage 2: experiment=caption_stage2_*)."""

    enabled: bool = False
    candidates: int = 5  # K per sample: the beams kept (or samples drawn, with generation.sampling)
    generation: GenerationConfig = field(default_factory=scst_generation)
    reward_weight: float = 1.0  # OFA's CIDER_REWARD_WEIGHT


# ------------------------------------------------------------------------------------------------ CIDEr-D
def check_scst_alone(task_cfgs: dict[str, Any]) -> None:
    """Refuse SCST in a run of several tasks: SCST replaces the cross-entropy of whole batches (one task's
    criterion, `OFALitModule.training_loss`), and a mixture's batches mix the tasks' samples."""
    scst = [name for name, cfg in task_cfgs.items() if getattr(getattr(cfg, "scst", None), "enabled", False)]
    if scst and len(task_cfgs) > 1:
        raise RunConfigError(f"task.tasks.{scst[0]}.scst.enabled=true: SCST trains one task alone, but this mixture's "
                             f"batches mix {', '.join(task_cfgs)}; run it with task={scst[0]}")


def cider_sentence(text: str) -> str:
    """OFA's SCST text form: punctuation stripped, a trailing `.` dropped, ` <eos>` appended."""
    return strip_punctuation(text).strip().rstrip(".").strip() + " <eos>"


def ngrams(sentence: str, n: int = 4) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D (pycocoevalcap's formula: tf-idf n-gram vectors for n = 1..4, clipped overlap, Gaussian length
    penalty sigma = 6, x10) with FIXED document frequencies, as OFA's `CiderD(df=...)`: `df[ngram]` = number
    of training images whose references hold it, `ref_len` = log(number of training images)."""

    def __init__(self, df: dict[tuple[str, ...], float], ref_len: float, n: int = 4, sigma: float = 6.0) -> None:
        self.df, self.ref_len, self.n, self.sigma = df, ref_len, n, sigma

    @classmethod
    def from_references(cls, references: Sequence[Sequence[str]]) -> CiderD:
        """Document frequencies of `references` (one list of sentences per image, already in final form)."""
        df: Counter = Counter()
        for refs in references:
            df.update(set().union(*(ngrams(r) for r in refs)) if refs else set())
        return cls(dict(df), math.log(max(len(references), 1)))

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        for gram, tf in counts.items():
            weight = tf * (self.ref_len - math.log(max(1.0, self.df.get(gram, 0.0))))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        return vec, [math.sqrt(x) for x in norm], sum(c for g, c in counts.items() if len(g) == 2)

    def score(self, hypothesis: str, references: Sequence[str]) -> float:
        """CIDEr-D of one hypothesis against its references (sentences in final form)."""
        vh, nh, lh = self._vector(ngrams(hypothesis, self.n))
        total = [0.0] * self.n
        for ref in references:
            vr, nr, lr = self._vector(ngrams(ref, self.n))
            penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        return 10.0 * sum(total) / self.n / max(len(references), 1)

    def save(self, path: str | Path) -> None:
        data = {"ref_len": self.ref_len, "df": {" ".join(g): c for g, c in self.df.items()}}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> CiderD:
        data = json.loads(Path(path).read_text())
        return cls({tuple(k.split(" ")): v for k, v in data["df"].items()}, data["ref_len"])


# ------------------------------------------------------------------------------------------------ the loss
def leave_one_out_baseline(rewards: Tensor) -> Tensor:
    """(B, K) rewards -> (B, K): the mean reward of the other K-1 candidates of the same sample."""
    k = rewards.size(1)
    return (rewards.sum(1, keepdim=True) - rewards) / max(k - 1, 1)


def candidate_batch(candidates: list[list[Tensor]], bos: int, pad: int) -> tuple[Tensor, Tensor]:
    """B x K token sequences (each ending with `</s>`) -> `prev = <s> + hyp[:-1]`, `target = hyp`, right-padded:
    (B*K, T) each, candidates of sample b at rows b*K .. b*K+K-1."""
    flat = [c for cands in candidates for c in cands]
    t = max(c.numel() for c in flat)
    target = torch.full((len(flat), t), pad, dtype=torch.long)
    prev = torch.full((len(flat), t), pad, dtype=torch.long)
    for i, c in enumerate(flat):
        target[i, :c.numel()] = c
        prev[i, 0], prev[i, 1:c.numel()] = bos, c[:-1]
    return prev, target


def policy_gradient_loss(logits: Tensor, target: Tensor, advantages: Tensor, pad: int,
                         constraint_range: tuple[int, int] | None = None) -> LossOutput:
    """`-sum log p(target) * advantage` over non-pad tokens: logits (N,T,V), target (N,T), advantages (N,)."""
    if constraint_range is not None:
        logits = mask_outside_range(logits.flatten(0, 1), *constraint_range).view_as(logits)
    lp = F.log_softmax(logits.float(), -1).gather(-1, target[..., None]).squeeze(-1)  # (N, T)
    keep = target.ne(pad)
    weighted = -(lp * advantages.to(lp)[:, None]).masked_fill(~keep, 0.0)
    nll = -lp.masked_fill(~keep, 0.0)
    return LossOutput(loss=weighted.sum(), nll_loss=nll.sum(), ntokens=int(keep.sum()))


def fill_candidates(hyps: list, k: int) -> list[list[Tensor]]:
    """K token tensors per sample from the generator's hypotheses (fewer finished: the last repeated)."""
    out = []
    for sample in hyps:
        tokens = [h.tokens for h in sample[:k]]
        if not tokens:
            raise RuntimeError("SCST: the generator finished no hypothesis for a sample")
        out.append(tokens + [tokens[-1]] * (k - len(tokens)))
    return out


class SelfCriticalLoss:
    """Decode K candidates (eval mode, no grad), score them with `reward_fn`, baseline, teacher-force."""

    def __init__(self, cfg: ScstConfig, reward_fn: RewardFn, pad: int, bos: int, eos: int,
                 constraint_range: tuple[int, int] | None = None) -> None:
        gen = cfg.generation
        if gen.beam_size < cfg.candidates or not (gen.return_all or gen.sampling):
            raise ValueError(f"task.scst.candidates={cfg.candidates} needs generation.beam_size >= it and "
                             "return_all (or sampling)")
        self.cfg, self.reward_fn, self.pad, self.bos, self.eos = cfg, reward_fn, pad, bos, eos
        self.constraint_range = constraint_range

    def candidates(self, model: nn.Module, batch: dict[str, Any]) -> list[list[Tensor]]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                gen = SequenceGenerator(model, self.cfg.generation, pad=self.pad, bos=self.bos, eos=self.eos)
                hyps = gen.generate(batch["src_tokens"], batch.get("patch_images"), batch.get("patch_masks"),
                                    code_masks=batch.get("code_masks"))
        finally:
            model.train(was_training)
        return fill_candidates(hyps, self.cfg.candidates)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[LossOutput, Tensor]:
        """The summed loss (divide by `ntokens`) and the (B, K) rewards."""
        cands = self.candidates(model, batch)
        rewards = self.reward_fn(cands, batch).float() * self.cfg.reward_weight  # (B, K)
        advantages = (rewards - leave_one_out_baseline(rewards)).flatten()  # (B*K,)
        prev, target = candidate_batch(cands, self.bos, self.pad)
        device, k = batch["src_tokens"].device, self.cfg.candidates
        images, masks, code = (batch.get(key) for key in ("patch_images", "patch_masks", "code_masks"))
        logits = model(batch["src_tokens"].repeat_interleave(k, 0), prev.to(device),
                       *(None if x is None else x.repeat_interleave(k, 0) for x in (images, masks, code)))  # (B*K,T,V)
        out = policy_gradient_loss(logits, target.to(device), advantages.to(device), self.pad, self.constraint_range)
        return out, rewards
