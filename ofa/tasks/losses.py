"""OFA's training loss: label-smoothed cross-entropy in fairseq's form (spec §4.1).

`adjust_label_smoothed_cross_entropy` in OFA: optional logit constraints (a per-position mask from a trie,
or a vocabulary range), log-probs scaled by a per-sample confidence, padding dropped, label smoothing
spread over the *allowed* set only, and optionally the worst tokens dropped after some updates. The loss
is a sum; the caller divides by `ntokens` (fairseq's `sample_size`).

The encouraging-loss variant (spec §4.4, OFA's `adjust_label_smoothed_encouraging_loss`) adds a bonus
`log(1 - p)` (linear beyond `p > log_end`) that keeps pushing well-classified tokens towards p = 1, and
may also drop the best tokens (`drop_best_ratio`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
    encouraging: bool = False  # add the encouraging bonus (spec §4.4; OFA's *_el.sh scripts)
    log_end: float = 0.75  # the bonus is linear beyond p > log_end (1.0: log(1 - p) throughout)
    drop_best_ratio: float = 0.0  # drop this fraction of the lowest-loss tokens (encouraging-loss option)
    drop_best_after: int = 0


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
    ignore_prefix_size: int = 0,
    **options: Any,
) -> LossOutput:
    """Summed label-smoothed CE over non-pad target tokens.

    logits (B,T,V); target (B,T) with `pad` ignored; conf (B,) multiplies log-probs; constraint_masks
    (B,T,V) bool, True = allowed; constraint_range (s, e) allows ids [0, 4) and [s, e). `options`: those of
    `token_cross_entropy` (dropping the worst/best tokens, the encouraging bonus, Gaussian bin targets).
    """
    tokens = target_tokens(logits, target, pad, conf, constraint_masks, ignore_prefix_size)
    return token_cross_entropy(*tokens[:4], epsilon=epsilon, constraint_range=constraint_range, **options)


def target_positions(target: Tensor, pad: int, ignore_prefix_size: int = 0,
                     groups: Tensor | None = None) -> tuple[Tensor, Tensor, list[int]]:
    """Where the loss is taken: flat indices (N,) into the B*T decoder positions of the non-pad target tokens after
    the ignored prefix, their rows (N,), and the token count per group. target (B,T). `groups` (B,) int: tokens
    ordered by their row's group (row-major within one), counts per group id 0..max; None: row-major, one count."""
    T = target.shape[1]
    keep = target.ne(pad)
    if ignore_prefix_size > 0:
        keep[:, :ignore_prefix_size] = False
    tokens = keep.flatten().nonzero().squeeze(1)  # (N,) row-major; padding never reaches log_softmax
    rows = tokens // T
    if groups is None:
        return tokens, rows, [tokens.numel()]
    token_group = groups[rows]
    order = torch.sort(token_group, stable=True).indices
    counts = torch.bincount(token_group, minlength=int(groups.max()) + 1).tolist()
    return tokens[order], rows[order], counts


def target_fields(positions: Tensor, rows: Tensor, target: Tensor, conf: Tensor | None = None,
                  constraint_masks: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """What the loss needs at `target_positions`: target (N,), conf (N,) per token (conf (B,) per row), masks (N,V)
    (constraint_masks (B,T,V))."""
    masks = constraint_masks.flatten(0, 1)[positions] if constraint_masks is not None else None
    return target.flatten()[positions], conf[rows] if conf is not None else None, masks


def target_tokens(
    logits: Tensor,
    target: Tensor,
    pad: int,
    conf: Tensor | None = None,
    constraint_masks: Tensor | None = None,
    ignore_prefix_size: int = 0,
    groups: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, list[int]]:
    """The non-pad target tokens after the ignored prefix, in one `index_select` (one (N, V) copy; one scatter
    into a zero gradient in backward): logits (N,V), target (N,), conf (N,) per token, masks (N,V), and the
    token count per group (`target_positions`). logits (B,T,V). Training projects only these positions
    (`OFAModel.forward(target_positions=...)`); this is for logits that are already there."""
    positions, rows, counts = target_positions(target, pad, ignore_prefix_size, groups)
    return (logits.flatten(0, 1).index_select(0, positions),
            *target_fields(positions, rows, target, conf, constraint_masks), counts)


def token_cross_entropy(
    logits: Tensor,
    target: Tensor,
    conf: Tensor | None = None,
    masks: Tensor | None = None,
    epsilon: float = 0.1,
    constraint_range: tuple[int, int] | None = None,
    drop_worst_ratio: float = 0.0,
    drop_worst_after: int = 0,
    update_num: int = 0,
    encouraging_log_end: float | None = None,
    drop_best_ratio: float = 0.0,
    drop_best_after: int = 0,
    bin_range: tuple[int, int] | None = None,
    bin_sigma: float = 0.0,
) -> LossOutput:
    """`label_smoothed_cross_entropy` on target tokens already selected (`target_tokens`): logits (N,V), target (N,),
    conf (N,) per token, masks (N,V) bool."""
    if masks is not None:
        logits = logits.masked_fill(~masks, float("-inf"))
    if constraint_range is not None:
        logits = mask_outside_range(logits, *constraint_range)
    lprobs = F.log_softmax(logits.float(), dim=-1)
    if conf is not None:
        lprobs = lprobs * conf.to(lprobs)[:, None]
    bins = (*bin_range, bin_sigma) if bin_sigma > 0 and bin_range is not None else None
    loss, nll, keep_idx = _smoothed_nll(lprobs, target, epsilon, masks, constraint_range, bins)  # (N,) each
    if drop_worst_ratio > 0 and update_num > drop_worst_after:
        loss, idx = torch.topk(loss, k=int(loss.numel() * (1 - drop_worst_ratio)), largest=False)
        nll, keep_idx = nll[idx], keep_idx[idx]
    if drop_best_ratio > 0 and update_num > drop_best_after:
        loss, idx = torch.topk(loss, k=int(loss.numel() * (1 - drop_best_ratio)), largest=True)
        nll, keep_idx = nll[idx], keep_idx[idx]
    total = loss.sum()
    if encouraging_log_end is not None:
        total = total + encouraging_bonus(lprobs[keep_idx], target[keep_idx], epsilon, encouraging_log_end)
    return LossOutput(loss=total, nll_loss=nll.sum(), ntokens=loss.numel())


def encouraging_bonus(lprobs: Tensor, target: Tensor, epsilon: float, log_end: float) -> Tensor:
    """OFA's encouraging term (spec §4.4), summed: `(1-eps) * sum_t b[t, y_t] + eps/V * sum_{t,v} b[t, v]`
    with `b = log(max(1 - p, 1e-5))`, replaced beyond `p > log_end` by its tangent-like line through
    `(log_end, log(1 - log_end))` with slope `1 / (log_end - 1)`. lprobs (N,V), target (N,)."""
    probs = lprobs.exp()
    bonus = torch.log(torch.clamp(1.0 - probs, min=1e-5))  # (N, V), <= 0
    if log_end != 1.0:
        line = (probs - log_end) / (log_end - 1.0) + math.log(1.0 - log_end)
        bonus = torch.where(probs > log_end, line, bonus)
    on_target = bonus.gather(-1, target[:, None]).sum()
    return (1.0 - epsilon) * on_target + epsilon / lprobs.size(-1) * bonus.sum()


def bin_target_nll(lprobs: Tensor, target: Tensor, start: int, end: int, sigma: float) -> Tensor:
    """(N,) cross-entropy against a discretised Gaussian (std `sigma` bins, cut at 3 sigma, renormalised) centred
    on each target in `[start, end)`; rows with other targets keep their one-hot NLL. lprobs (N,V), target (N,).

    A location token's neighbours are nearly as right as itself (1000 bins over a 64-pixel image: ~16 per
    pixel); the one-hot target scores them as wrong as any other token."""
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)  # (N,)
    rows = ((target >= start) & (target < end)).nonzero().squeeze(-1)  # (M,)
    if rows.numel() == 0:
        return nll
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=lprobs.device)  # (K,)
    ids = target[rows, None] + offsets  # (M, K)
    picked = lprobs[rows].gather(-1, ids.clamp(start, end - 1))  # (M, K)
    allowed = (ids >= start) & (ids < end) & picked.isfinite()  # inside the bins and not masked by a constraint
    weights = torch.exp(-0.5 * (offsets.float() / sigma) ** 2).expand_as(ids) * allowed  # (M, K)
    weights = weights / weights.sum(-1, keepdim=True)
    return nll.index_put((rows,), -(weights * picked.masked_fill(~allowed, 0.0)).sum(-1))


def mask_outside_range(logits: Tensor, start: int, end: int) -> Tensor:
    """(N, V) logits with -inf outside the 4 specials and [start, end) (OFA's `--constraint-range`)."""
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
    bins: tuple[int, int, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """fairseq's `label_smoothed_nll_loss` on already-flattened (N,V) log-probs: per-token smoothed loss,
    NLL and their indices (N,) each (the caller drops tokens from these). `bins` = (start, end, sigma): the
    target term of a `<bin_i>` target is `bin_target_nll`'s Gaussian one; the returned NLL stays one-hot."""
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
    fit = bin_target_nll(lprobs, target, *bins) if bins is not None else nll  # (N,)
    loss = (1.0 - epsilon - eps_i) * fit + eps_i * smooth  # (N,)
    return loss, nll, torch.arange(loss.numel(), device=loss.device)
