"""Source/target noise for OFA's text pretraining and Gigaword.

spec §3.11 text infilling (BART add_whole_word_mask, mask_ratio 0.3, Poisson λ 3, replace_length 1):
`text_infilling` follows fairseq's `DenoisingDataset.add_whole_word_mask` with `mask_length="span-poisson"`
(and its `add_insertion_noise`); every random draw goes through the caller's `torch.Generator`.
`add_target_noise` is Gigaword's `noise_ratio`; `word_start_table` builds the whole-word table.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def poisson_span_probs(poisson_lambda: float) -> Tensor:
    """(K,) float: e^-λ λ^k / k! for k = 0.., up to and including the first k (< 128) whose value is < 1e-7."""
    probs, term = [], math.exp(-poisson_lambda)
    for k in range(128):
        probs.append(term)
        if term < 1e-7:
            break
        term *= poisson_lambda / (k + 1)
    return torch.tensor(probs)


def sample_span_lengths(num_to_mask: int, probs: Tensor, generator: torch.Generator | None = None,
                        draws: Tensor | None = None) -> Tensor:
    """(n,) long span lengths summing to `num_to_mask`, zeros (insertions) kept in place.

    Draws `num_to_mask` lengths from Categorical(`probs`) (`draws` replaces the first batch, for tests), draws
    `num_to_mask` more while their sum falls short, then cuts at the first index i with cumsum >= budget and
    sets lengths[i] to what is left of the budget.
    """
    def draw() -> Tensor:
        return torch.multinomial(probs, num_to_mask, replacement=True, generator=generator)

    lengths = draw() if draws is None else torch.as_tensor(draws, dtype=torch.long).clone()
    while int(lengths.sum()) < num_to_mask:
        lengths = torch.cat([lengths, draw()])
    cum = torch.cumsum(lengths, 0)
    i = int((cum >= num_to_mask).nonzero()[0])
    lengths[i] = num_to_mask - (int(cum[i - 1]) if i > 0 else 0)
    return lengths[: i + 1]


def _fill(n: int, mask_id: int, random: Tensor, random_range: tuple[int, int] | None,
          generator: torch.Generator | None) -> Tensor:
    """(n,) long: `mask_id`, except where the bool (n,) `random` holds, a uniform id in `random_range`."""
    out = torch.full((n,), mask_id, dtype=torch.long)
    if int(random.sum()):
        if random_range is None:
            raise ValueError("random_ratio > 0 needs random_range=(low, high)")
        out[random] = torch.randint(*random_range, (int(random.sum()),), generator=generator)
    return out


def add_insertion_noise(tokens: Tensor, p: float, mask_id: int, random_ratio: float = 0.0,
                        random_range: tuple[int, int] | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """(L,) -> (L + n,): n = ceil(L * p) masks (ceil(n * random_ratio) of them random ids) inserted at
    uniform positions 1 .. L+n-2, so the first and last tokens stay at the ends."""
    if p == 0.0:
        return tokens
    num_tokens = tokens.size(0)
    n = math.ceil(num_tokens * p)
    noise_idx = torch.randperm(num_tokens + n - 2, generator=generator)[:n] + 1
    is_noise = torch.zeros(num_tokens + n, dtype=torch.bool)
    is_noise[noise_idx] = True
    result = torch.empty(num_tokens + n, dtype=torch.long)
    random = torch.arange(n) < math.ceil(n * random_ratio)
    result[noise_idx] = _fill(n, mask_id, random, random_range, generator)
    result[~is_noise] = tokens
    return result


def apply_spans(tokens: Tensor, word_start: Tensor, idx: Tensor, lengths: Tensor, replace_length: int,
                mask_id: int, random: Tensor | None = None, random_range: tuple[int, int] | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Mask whole-word spans: `tokens` (L,) long, `word_start` (L,) 0/1 per position, span starts `idx` (S,)
    and lengths in words `lengths` (S,) >= 1; `random` (S,) bool picks spans filled with random ids.

    A span covers its first token and every following token until `lengths` more word starts have been
    passed (continuation tokens are free); </s> counts as 255 word starts. replace_length 1: first token
    -> mask, the rest deleted; 0: all deleted; -1: all -> mask. Returns a new (L',) long tensor.
    """
    source, word_start = tokens.clone(), word_start.long().clone()
    random = torch.zeros(idx.size(0), dtype=torch.bool) if random is None else random
    keep = torch.ones(source.size(0), dtype=torch.bool)
    word_start[-1] = 255  # spans never run past </s>
    if replace_length == 0:
        keep[idx] = False
    else:
        source[idx] = _fill(idx.size(0), mask_id, random, random_range, generator)
    lengths = lengths - 1
    while idx.numel():
        lengths = lengths - word_start[idx + 1]  # continuation tokens cost nothing: whole words
        open_ = lengths >= 0
        idx, lengths, random = idx[open_] + 1, lengths[open_], random[open_]
        if replace_length == -1:
            source[idx] = _fill(idx.size(0), mask_id, random, random_range, generator)
        else:
            keep[idx] = False
    return source[keep]


def text_infilling(tokens: Tensor, is_word_start: Tensor, mask_id: int, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0, replace_length: int = 1, random_ratio: float = 0.0,
                   random_range: tuple[int, int] | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """BART whole-word span masking of `tokens` (L,) long, `<s> ... </s>`; returns a new (L',) long tensor.

    `is_word_start` (V,) bool/long marks vocabulary ids that begin a word. ceil(#words * mask_ratio) words
    are masked in Poisson(λ)-long spans of whole words; each span becomes one mask (replace_length 1),
    nothing (0) or one mask per token (-1); zero-length spans become inserted masks.
    """
    source = tokens.clone()
    word_start = is_word_start.long()[source]  # (L,)
    word_start[0] = word_start[-1] = 0
    num_to_mask = math.ceil(float(word_start.sum().float() * mask_ratio))  # float32 as fairseq: 50 words -> 16
    if num_to_mask == 0:
        return source
    lengths = sample_span_lengths(num_to_mask, poisson_span_probs(poisson_lambda), generator)
    num_inserts = int((lengths == 0).sum())
    lengths = lengths[lengths > 0]  # (S,)
    if lengths.numel() == 0:
        return add_insertion_noise(source, num_inserts / source.size(0), mask_id, random_ratio, random_range,
                                   generator)

    starts = word_start.nonzero().squeeze(1)
    idx = starts[torch.randperm(starts.size(0), generator=generator)[: lengths.size(0)]]  # (S,)
    random = torch.rand(idx.size(0), generator=generator) < random_ratio  # (S,)
    source = apply_spans(source, word_start, idx, lengths, replace_length, mask_id, random, random_range, generator)
    if num_inserts > 0:
        source = add_insertion_noise(source, num_inserts / source.size(0), mask_id, random_ratio, random_range,
                                     generator)
    return source


def add_target_noise(tokens: Tensor, p: float, low: int, high: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """Gigaword `noise_ratio`: (L,) -> new (L,), each id replaced with probability p by a uniform id in [low, high)."""
    noisy = torch.rand(tokens.shape, generator=generator) < p
    out = tokens.clone()
    out[noisy] = torch.randint(low, high, (int(noisy.sum()),), generator=generator, dtype=tokens.dtype)
    return out


def word_start_table(tokenizer) -> Tensor:
    """(V,) bool: ids 0..3, ids >= `tokenizer.mask` and BPE tokens starting with "Ġ" (leading space)."""
    table = torch.ones(len(tokenizer), dtype=torch.bool)
    for i in range(4, tokenizer.mask):
        token = tokenizer.id_to_token(i)
        table[i] = token is not None and token.startswith("Ġ")
    return table
