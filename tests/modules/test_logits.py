"""Next-token masks of ofa/modules/logits.py."""
from __future__ import annotations

import torch

from ofa.modules.logits import banned_ngram_mask, range_allowed_mask, top_k_top_p_filter, trie_allowed_mask
from ofa.modules.trie import Trie


def test_range_allowed_mask_keeps_specials():
    assert range_allowed_mask(12, 6, 9).nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 6, 7, 8]


def test_trie_allowed_mask():
    trie = Trie([[0, 5, 6, 2], [0, 5, 7, 2], [0, 8, 2]])
    mask = trie_allowed_mask(trie, [[0], [0, 5], [0, 5, 6], [0, 9]], vocab_size=10, fallback=2)
    assert [row.nonzero().squeeze(1).tolist() for row in mask] == [[5, 8], [6, 7], [2], [2]]
    last = trie_allowed_mask(trie, [[0]], vocab_size=10, fallback=2, always=2)
    assert last[0].nonzero().squeeze(1).tolist() == [2, 5, 8]


def test_banned_ngram_mask():
    tokens = torch.tensor([[0, 5, 6, 5], [0, 5, 6, 7], [0, 4, 4, 4]])
    bigram = banned_ngram_mask(tokens, 2, vocab_size=10)
    assert [row.nonzero().squeeze(1).tolist() for row in bigram] == [[6], [], [4]]
    trigram = banned_ngram_mask(tokens, 3, vocab_size=10)
    assert [row.nonzero().squeeze(1).tolist() for row in trigram] == [[], [], [4]]
    assert not banned_ngram_mask(tokens[:, :2], 3, vocab_size=10).any()  # too short
    unigram = banned_ngram_mask(tokens, 1, vocab_size=10)  # n=1: no token twice
    assert unigram[1].nonzero().squeeze(1).tolist() == [0, 5, 6, 7]


def test_top_k_top_p_filter():
    lprobs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda out: out[0].isfinite().nonzero().squeeze(1).tolist()  # noqa: E731
    assert kept(top_k_top_p_filter(lprobs, top_k=2)) == [0, 1]
    assert kept(top_k_top_p_filter(lprobs, top_p=0.4)) == [0]  # the best id is always kept
    assert kept(top_k_top_p_filter(lprobs, top_p=0.7)) == [0, 1]  # smallest set reaching top_p
    assert kept(top_k_top_p_filter(lprobs, top_p=0.85)) == [0, 1, 2]
    assert kept(top_k_top_p_filter(lprobs, top_k=2, top_p=0.99)) == [0, 1]
    assert kept(top_k_top_p_filter(lprobs)) == [0, 1, 2, 3]
    out = top_k_top_p_filter(lprobs, top_k=3)
    assert torch.equal(out[0, :3], lprobs[0, :3])  # kept values are not renormalised
