"""OFA's training loss: label-smoothed cross-entropy in fairseq's form (spec §4.1).

`adjust_label_smoothed_cross_entropy` in OFA: optional logit constraints (a per-position mask from a trie,
or a vocabulary range), log-probs scaled by a per-sample confidence, padding dropped, label smoothing
spread over the *allowed* set only, and optionally the worst tokens dropped after some updates. The loss
is a sum; the caller divides by `ntokens` (fairseq's `sample_size`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

N_SPECIALS = 4  # <s> <pad> </s> <unk> stay allowed under a constraint range


@dataclass
class LossConfig:
    """Criterion options shared by all tasks (label smoothing itself is per task: `TaskConfig.label_smoothing`)."""

    drop_worst_ratio: float = 0.0  # caption stage 1: 0.2
    drop_worst_after: int = 0  # updates before dropping starts (2500 large, 6000 base)
    ignore_prefix_size: int = 0


@dataclass
class LossOutput:
    loss: Tensor  # summed smoothed loss over kept tokens
    nll_loss: Tensor  # summed unsmoothed NLL over kept tokens (reported, not optimised)
    ntokens: int  # kept tokens: the normaliser


def label_smoothed_cross_entropy(
    logits: Tensor,
    target: Tensor,
    epsilon: float = 0.1,
    pad: int = 1,
    conf: Tensor | None = None,
    constraint_masks: Tensor | None = None,
    constraint_range: tuple[int, int] | None = None,
    drop_worst_ratio: float = 0.0,
    drop_worst_after: int = 0,
    update_num: int = 0,
    ignore_prefix_size: int = 0,
) -> LossOutput:
    """Summed label-smoothed CE over non-pad target tokens.

    logits (B,T,V); target (B,T) with `pad` ignored; conf (B,) multiplies log-probs; constraint_masks
    (B,T,V) bool, True = allowed; constraint_range (s, e) allows ids [0, 4) and [s, e).
    """
    if ignore_prefix_size > 0:
        logits, target = logits[:, ignore_prefix_size:], target[:, ignore_prefix_size:]
        if constraint_masks is not None:
            constraint_masks = constraint_masks[:, ignore_prefix_size:]
    keep = target.ne(pad)  # (B,T); padding goes first so all-masked pad rows never reach log_softmax
    logits, tgt = logits[keep], target[keep]  # (N,V), (N,)
    masks = constraint_masks[keep] if constraint_masks is not None else None
    if masks is not None:
        logits = logits.masked_fill(~masks, float("-inf"))
    if constraint_range is not None:
        logits = _mask_outside_range(logits, *constraint_range)
    lprobs = F.log_softmax(logits.float(), dim=-1)
    if conf is not None:
        lprobs = lprobs * conf.to(lprobs)[:, None].expand_as(keep)[keep][:, None]
    return _smoothed_nll(lprobs, tgt, epsilon, masks, constraint_range, drop_worst_ratio,
                         drop_worst_after, update_num)


def _mask_outside_range(logits: Tensor, start: int, end: int) -> Tensor:
    logits = logits.clone()
    logits[:, N_SPECIALS:start] = float("-inf")
    logits[:, end:] = float("-inf")
    return logits


def _smoothed_nll(
    lprobs: Tensor,
    target: Tensor,
    epsilon: float,
    masks: Tensor | None,
    constraint_range: tuple[int, int] | None,
    drop_worst_ratio: float,
    drop_worst_after: int,
    update_num: int,
) -> LossOutput:
    """fairseq's `label_smoothed_nll_loss` on already-flattened (N,V) log-probs."""
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)  # (N,)
    if masks is not None:
        smooth = -lprobs.masked_fill(~masks, 0.0).sum(-1)
        eps_i = epsilon / (masks.sum(-1) - 1 + 1e-6)
    elif constraint_range is not None:
        start, end = constraint_range
        allowed = torch.cat([lprobs[:, :N_SPECIALS], lprobs[:, start:end]], dim=-1)
        smooth = -allowed.sum(-1)
        eps_i = epsilon / (N_SPECIALS + end - start - 1 + 1e-6)
    else:
        smooth = -lprobs.sum(-1)
        eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth  # (N,)
    if drop_worst_ratio > 0 and update_num > drop_worst_after:
        loss, idx = torch.topk(loss, k=int(loss.numel() * (1 - drop_worst_ratio)), largest=False)
        nll = nll[idx]
    return LossOutput(loss=loss.sum(), nll_loss=nll.sum(), ntokens=loss.numel())
