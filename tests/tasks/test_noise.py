"""Tests of ofa/tasks/noise.py: BART text infilling (fairseq add_whole_word_mask), target noise, word starts."""
from __future__ import annotations

import math
import random as pyrandom

import pytest
import torch

from ofa.tasks import noise
from ofa.tasks.noise import (add_target_noise, apply_spans, poisson_span_probs, sample_span_lengths,
                             text_infilling, word_start_table)

MASK = 999
WORDS = 40
BUDGET = 12  # ceil(40 * 0.3)
ONE_TOKEN_WORDS = torch.cat([torch.tensor([0]), torch.arange(10, 10 + WORDS), torch.tensor([2])])  # (42,)
ALL_START = torch.ones(1000, dtype=torch.bool)


def expected_spans_and_zeros(budget: int, probs: torch.Tensor) -> tuple[float, float]:
    """Exact E[#nonzero spans], E[#zero draws] of the trimmed draws: a nonzero span starts at every partial sum
    s < budget the draws visit (v(s) = sum_k v(s-k) q_k / (1-q_0)), and each visit first draws a geometric
    number of zeros, with mean q_0 / (1-q_0)."""
    q = (probs / probs.sum()).tolist()
    visit = [1.0] + [0.0] * (budget - 1)
    for s in range(1, budget):
        visit[s] = sum(visit[s - k] * q[k] for k in range(1, min(s, len(q) - 1) + 1)) / (1 - q[0])
    spans = sum(visit)
    return spans, spans * q[0] / (1 - q[0])


def reference_sentence(rng: pyrandom.Random, q: list[float]) -> tuple[int, int]:
    """Scalar model of one 40-word sentence of one-token words: (covered words, masks left by replace_length 1).
    Spans are intervals [s, s+L) clipped at the last word; a span whose start lies strictly inside another
    span loses its mask (the other span deletes it); zero draws are inserted masks."""
    lengths, total = [], 0
    while total < BUDGET:
        lengths.append(rng.choices(range(len(q)), weights=q)[0])
        total += lengths[-1]
    lengths[-1] -= total - BUDGET
    spans = [k for k in lengths if k]
    starts = rng.sample(range(1, WORDS + 1), len(spans))
    covered = {p for s, k in zip(starts, spans) for p in range(s, min(s + k, WORDS + 1))}
    masks = sum(not any(t < s < t + k for t, k in zip(starts, spans)) for s in starts)
    return len(covered), masks + lengths.count(0)


def test_poisson_probs_truncate_after_first_below_1e7():
    probs = poisson_span_probs(3.0)
    assert len(probs) == 18  # 3^16/16! e^-3 = 1.02e-7, 3^17/17! e^-3 = 1.8e-8 is the last one kept
    assert probs[-1] < 1e-7 <= probs[-2]
    assert probs[0].item() == pytest.approx(math.exp(-3)) and probs[3].item() == pytest.approx(4.5 * math.exp(-3))


@pytest.mark.parametrize("draws,budget,expected", [
    ([2, 0, 5], 4, [2, 0, 2]),  # -> 1 insert + spans [2, 2]
    ([5], 3, [3]),
    ([4, 2], 4, [4]),
    ([0, 0, 3, 1], 3, [0, 0, 3]),
    ([1, 1, 2, 9], 4, [1, 1, 2]),
])
def test_sample_span_lengths_trims_explicit_draws(draws, budget, expected):
    assert sample_span_lengths(budget, poisson_span_probs(3.0), draws=torch.tensor(draws)).tolist() == expected


def test_sample_span_lengths_draws_more_until_budget_is_reached():
    g = torch.Generator().manual_seed(1)
    lengths = sample_span_lengths(4, poisson_span_probs(3.0), g, draws=torch.tensor([1, 0]))
    assert lengths[:2].tolist() == [1, 0] and lengths.sum() == 4 and lengths[-1] > 0 and (lengths >= 0).all()


def test_span_length_statistics_match_derivation():
    probs = poisson_span_probs(3.0)
    spans_exp, zeros_exp = expected_spans_and_zeros(BUDGET, probs)
    assert spans_exp == pytest.approx(4.27, abs=0.01) and zeros_exp == pytest.approx(0.224, abs=0.002)
    g = torch.Generator().manual_seed(0)
    draws = [sample_span_lengths(BUDGET, probs, g) for _ in range(4000)]
    spans = sum(int((d > 0).sum()) for d in draws) / len(draws)
    zeros = sum(int((d == 0).sum()) for d in draws) / len(draws)
    assert all(int(d.sum()) == BUDGET for d in draws)
    assert spans == pytest.approx(spans_exp, abs=0.05) and zeros == pytest.approx(zeros_exp, abs=0.03)
    assert zeros / (zeros + spans) == pytest.approx(math.exp(-3), abs=0.008)  # ~5% of spans are insertions


def test_infilling_statistics_over_2000_sentences():
    g = torch.Generator().manual_seed(0)
    covered, masks = [], []
    for _ in range(2000):
        out = text_infilling(ONE_TOKEN_WORDS, ALL_START, MASK, generator=g)
        kept = out[(out >= 10) & (out < 10 + WORDS)]
        assert (kept.diff() > 0).all() and out[0] == 0 and out[-1] == 2
        covered.append(WORDS - kept.numel())
        masks.append(int((out == MASK).sum()))
        assert covered[-1] <= BUDGET and out.numel() == 2 + kept.numel() + masks[-1]
    rng, q = pyrandom.Random(0), poisson_span_probs(3.0).tolist()
    ref = [reference_sentence(rng, q) for _ in range(20000)]
    ref_covered, ref_masks = (sum(r[i] for r in ref) / len(ref) for i in (0, 1))
    # 12 words are budgeted (0.30), but spans overlapping other spans or cut at </s> leave ~0.268 covered.
    assert sum(covered) / (2000 * WORDS) == pytest.approx(ref_covered / WORDS, abs=0.005)
    assert 0.25 < sum(covered) / (2000 * WORDS) <= 0.30
    # One mask per surviving span plus the inserts: E = 4.27 spans + 0.22 inserts - ~0.5 spans swallowed.
    assert sum(masks) / 2000 == pytest.approx(ref_masks, abs=0.1)
    _, zeros_exp = expected_spans_and_zeros(BUDGET, poisson_span_probs(3.0))
    assert 2.5 < sum(covered) / (sum(masks) - 2000 * zeros_exp) < 4.0  # words per span mask


def test_inserted_masks_with_replace_length_minus_one():
    g = torch.Generator().manual_seed(3)
    inserts = []
    for _ in range(2000):
        out = text_infilling(ONE_TOKEN_WORDS, ALL_START, MASK, replace_length=-1, generator=g)
        kept = int(((out >= 10) & (out < 10 + WORDS)).sum())
        inserts.append(out.numel() - ONE_TOKEN_WORDS.numel())  # every span token stays (as a mask)
        assert int((out == MASK).sum()) - inserts[-1] == WORDS - kept  # masks = covered words + inserts
    _, zeros_exp = expected_spans_and_zeros(BUDGET, poisson_span_probs(3.0))
    assert sum(inserts) / 2000 == pytest.approx(zeros_exp, abs=0.05)


def _multi_token_sentence(rng: pyrandom.Random) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """<s> + 1..25 words of 1..4 tokens + </s>, every token a distinct id (4..), so ids give positions."""
    word_of, table = [], torch.zeros(1000, dtype=torch.bool)
    for w in range(rng.randint(1, 25)):
        word_of += [w] * rng.randint(1, 4)
    ids = list(range(4, 4 + len(word_of)))
    for i, w in zip(ids, word_of):
        table[i] = i == 4 or word_of[i - 5] != w
    return torch.tensor([0] + ids + [2]), table, word_of


@pytest.mark.parametrize("replace_length", [1, 0, -1])
def test_spans_cover_whole_words(replace_length):
    rng, g = pyrandom.Random(replace_length), torch.Generator().manual_seed(5)
    for _ in range(300):
        tokens, table, word_of = _multi_token_sentence(rng)
        out = text_infilling(tokens, table, MASK, replace_length=replace_length, generator=g)
        assert out[0] == 0 and out[-1] == 2 and set(out[1:-1].tolist()) <= set(tokens[1:-1].tolist()) | {MASK}
        kept = [t for t in out.tolist() if 4 <= t < MASK]
        assert kept == sorted(kept)
        kept_words = [word_of[t - 4] for t in kept]
        for w in set(kept_words):  # a word survives whole or not at all
            assert kept_words.count(w) == word_of.count(w)
        text = [t for t in out.tolist() if t != MASK]
        for prev, t in zip(text, text[1:]):  # a kept continuation follows its own word's previous token
            if 4 <= t < MASK and not table[t]:
                assert prev == t - 1


def test_no_words_or_zero_ratio_leave_tokens_unchanged():
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([0, 10, 11, 12, 2])
    assert torch.equal(text_infilling(tokens, torch.zeros(1000, dtype=torch.bool), MASK, generator=g), tokens)
    assert torch.equal(text_infilling(tokens, ALL_START, MASK, mask_ratio=0.0, generator=g), tokens)
    assert torch.equal(text_infilling(torch.tensor([0, 2]), ALL_START, MASK, generator=g), torch.tensor([0, 2]))


def test_number_of_words_to_mask_rounds_like_fairseq_float32():
    # fairseq computes ceil(float32(#words) * 0.3): 50 words -> 16 (double arithmetic would give 15).
    tokens = torch.cat([torch.tensor([0]), torch.arange(10, 60), torch.tensor([2])])
    g = torch.Generator().manual_seed(0)
    covered = [50 - int(((o >= 10) & (o < 60)).sum())
               for o in (text_infilling(tokens, ALL_START, MASK, replace_length=-1, generator=g) for _ in range(200))]
    assert max(covered) == 16


@pytest.mark.parametrize("replace_length,middle", [(1, 1), (0, 0), (-1, 3)])
def test_one_word_sentence(replace_length, middle):
    table = torch.zeros(1000, dtype=torch.bool)
    table[10] = True
    tokens = torch.tensor([0, 10, 30, 31, 2])  # one word of three tokens: ceil(0.3) = 1 word, span length 1
    for seed in range(30):
        out = text_infilling(tokens, table, MASK, replace_length=replace_length,
                             generator=torch.Generator().manual_seed(seed))
        assert out[0] == 0 and out[-1] == 2 and (out[1:-1] == MASK).all() and out.numel() >= 2 + middle


# <s> a a' b c c' c'' d </s>: words start at positions 1, 3, 4, 7
HAND = torch.tensor([0, 10, 30, 11, 12, 31, 32, 13, 2])
HAND_STARTS = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0])
M = MASK


@pytest.mark.parametrize("idx,lengths,replace_length,expected", [
    ([3], [2], 1, [0, 10, 30, M, 13, 2]),  # b and c (3 tokens) -> one mask; stops before d
    ([3], [2], 0, [0, 10, 30, 13, 2]),
    ([3], [2], -1, [0, 10, 30, M, M, M, M, 13, 2]),
    ([7], [5], 1, [0, 10, 30, 11, 12, 31, 32, M, 2]),  # </s> ends the span
    ([3, 1], [2, 1], 1, [0, M, M, 13, 2]),
    ([3, 1], [2, 1], 0, [0, 13, 2]),
    ([1, 3], [3, 1], 1, [0, M, 13, 2]),  # the span at b lies inside a..c: its mask is deleted
    ([1, 3], [3, 1], -1, [0, M, M, M, M, M, M, 13, 2]),
])
def test_apply_spans_hand_cases(idx, lengths, replace_length, expected):
    out = apply_spans(HAND, HAND_STARTS, torch.tensor(idx), torch.tensor(lengths), replace_length, MASK)
    assert out.tolist() == expected


def test_apply_spans_random_fill():
    out = apply_spans(HAND, HAND_STARTS, torch.tensor([3, 1]), torch.tensor([2, 1]), 1, MASK,
                      random=torch.tensor([True, False]), random_range=(100, 101))
    assert out.tolist() == [0, M, 100, 13, 2]


def test_explicit_draws_end_to_end(monkeypatch):
    # 11 words -> 4 to mask; draws [2, 0, 5] -> lengths [2, 0, 2]: one insert and two spans of two words.
    real = noise.sample_span_lengths
    monkeypatch.setattr(noise, "sample_span_lengths",
                        lambda n, probs, generator: real(n, probs, generator, draws=torch.tensor([2, 0, 5])))
    tokens = torch.cat([torch.tensor([0]), torch.arange(10, 21), torch.tensor([2])])
    for seed in range(30):
        out = text_infilling(tokens, ALL_START, MASK, replace_length=-1, generator=torch.Generator().manual_seed(seed))
        covered = 11 - int(((out >= 10) & (out < 21)).sum())
        assert out.numel() == 14 and int((out == MASK).sum()) == covered + 1 and covered in (2, 3, 4)


def test_random_ratio_one_replaces_every_mask():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = text_infilling(ONE_TOKEN_WORDS, ALL_START, MASK, random_ratio=1.0, random_range=(100, 200), generator=g)
        new = out[(out < 10) | (out >= 10 + WORDS)][1:-1]
        assert MASK not in out.tolist() and new.numel() > 0 and ((new >= 100) & (new < 200)).all()
    with pytest.raises(ValueError):
        text_infilling(ONE_TOKEN_WORDS, ALL_START, MASK, random_ratio=1.0, generator=g)


def test_reproducible_and_input_untouched():
    tokens, table, _ = _multi_token_sentence(pyrandom.Random(7))
    before = tokens.clone()
    for rl in (1, 0, -1):
        runs = [text_infilling(tokens, table, MASK, replace_length=rl, random_ratio=0.5, random_range=(100, 200),
                               generator=torch.Generator().manual_seed(s)) for s in (11, 11, 12, 13, 14)]
        assert torch.equal(runs[0], runs[1]) and any(not torch.equal(runs[0], r) for r in runs[2:])
    assert torch.equal(tokens, before)


def test_add_target_noise():
    tokens = torch.zeros(100_000, dtype=torch.long)
    out = add_target_noise(tokens, 0.1, 10, 20, generator=torch.Generator().manual_seed(0))
    changed = out != 0
    assert changed.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert set(out[changed].tolist()) == set(range(10, 20)) and (tokens == 0).all() and out.dtype == tokens.dtype
    same = add_target_noise(tokens, 0.0, 10, 20)
    assert torch.equal(same, tokens) and same is not tokens


class FakeTokenizer:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "Ġthe", "cat", "Ġdog", "s", None, "<mask>", "<code_0>", "<bin_0>"]
    mask = 9

    def __init__(self):
        self.asked: list[int] = []

    def __len__(self):
        return len(self.tokens)

    def id_to_token(self, i):
        self.asked.append(i)
        return self.tokens[i]


def test_word_start_table():
    tok = FakeTokenizer()
    table = word_start_table(tok)
    assert table.dtype == torch.bool
    assert table.tolist() == [True] * 4 + [True, False, True, False, False] + [True] * 3
    assert max(tok.asked) < tok.mask
