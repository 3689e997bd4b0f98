"""Next-token masks used by `SequenceGenerator`: vocabulary ranges, tries, n-gram blocking, top-k/top-p.

Every function works on a batch of rows (one row = one hypothesis) and returns a new tensor or a
boolean mask of shape (R, V); nothing here knows about beams.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ofa.modules.trie import Trie

NUM_SPECIALS = 4  # <s> <pad> </s> <unk>: never masked by a constraint range (spec §3.6)


def range_allowed_mask(vocab_size: int, start: int, end: int, device: torch.device | None = None) -> Tensor:
    """(V,) bool: False for ids in [NUM_SPECIALS, start) and [end, V) (OFA's `constraint_range`)."""
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[NUM_SPECIALS:start] = False
    allowed[end:] = False
    return allowed


def trie_allowed_mask(trie: Trie, prefixes: list[list[int]], vocab_size: int, fallback: int,
                      always: int | None = None, device: torch.device | None = None) -> Tensor:
    """(R, V) bool: the trie children of each prefix.

    A prefix outside the trie (or complete) allows only `fallback` (</s>) so the hypothesis can end;
    `always`, when given, is allowed in every row (</s> at the last step).
    """
    allowed = torch.zeros(len(prefixes), vocab_size, dtype=torch.bool)
    for row, prefix in enumerate(prefixes):
        children = trie.next_tokens(prefix) or [fallback]
        allowed[row, children] = True
    if always is not None:
        allowed[:, always] = True
    return allowed.to(device)


def banned_ngram_mask(tokens: Tensor, n: int, vocab_size: int) -> Tensor:
    """(R, V) bool: tokens that would repeat an n-gram already present in each row of `tokens` (R, L).

    Like fairseq's NGramRepeatBlock: the last n-1 tokens are matched against every earlier (n-1)-gram
    and the token that followed it is banned. The row is used as given (it starts with <s>).
    """
    rows, length = tokens.shape
    banned = torch.zeros(rows, vocab_size + 1, dtype=torch.bool, device=tokens.device)
    if n < 1 or length < n:
        return banned[:, :vocab_size]
    windows = tokens.unfold(1, n, 1)  # (R, W, n), W = L - n + 1
    last = tokens[:, length - n + 1:]  # (R, n-1)
    match = (windows[:, :, :-1] == last[:, None, :]).all(-1)  # (R, W)
    idx = torch.where(match, windows[:, :, -1], torch.full_like(windows[:, :, -1], vocab_size))
    banned.scatter_(1, idx, True)  # column V collects the non-matches
    return banned[:, :vocab_size]


def top_k_top_p_filter(lprobs: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Keep the `top_k` best ids and/or the smallest set whose probability reaches `top_p`; -inf elsewhere.

    `top_k <= 0` / `top_p <= 0` disables that filter. Top-p keeps an id if the cumulative probability of
    the ids ranked before it is below `top_p` (so the best id is always kept).
    """
    out = lprobs
    if top_k > 0 and top_k < lprobs.size(-1):
        best = lprobs.topk(top_k, dim=-1).indices  # (R, k)
        drop = torch.ones_like(lprobs, dtype=torch.bool).scatter(1, best, False)
        out = out.masked_fill(drop, float("-inf"))
    if top_p > 0:
        sorted_lp, order = out.sort(dim=-1, descending=True)  # (R, V)
        probs = sorted_lp.exp()
        before = probs.cumsum(-1) - probs  # mass ranked strictly before each id
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out
