"""SequenceGenerator on a deterministic toy encoder-decoder: semantics, constraints, cache, sampling.

Parity with the OFA reference outputs lives in `test_generation_parity.py`.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from ofa.modules.generation import GenerationConfig, Hypothesis, SequenceGenerator
from ofa.modules.trie import Trie

PAD, BOS, EOS = 1, 0, 2


class ToyEncoderOut:
    selected_sizes: list[int] = []  # rows after each index_select (to see the batch shrink)

    def __init__(self, hidden: Tensor) -> None:
        self.hidden = hidden  # (B, D)

    def index_select(self, order: Tensor) -> ToyEncoderOut:
        ToyEncoderOut.selected_sizes.append(order.numel())
        return ToyEncoderOut(self.hidden.index_select(0, order))


class ToyCache:
    """Recurrent state of the toy decoder; `index_select` reorders it in place."""

    def __init__(self) -> None:
        self.state: Tensor | None = None  # (R, D)
        self.length = 0
        self.reorders = 0

    def index_select(self, order: Tensor) -> None:
        self.state = self.state.index_select(0, order)
        self.reorders += 1


class ToyModel(nn.Module):
    """A tiny RNN decoder over a mean-pooled source: order-, position- and source-dependent logits."""

    def __init__(self, vocab: int = 12, dim: int = 16, seed: int = 0, scale: float = 3.0,
                 eos_bias: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.src_emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.tgt_emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.rec = nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.out = nn.Parameter(torch.randn(dim, vocab, generator=g) * scale / dim**0.5)
        self.out_bias = nn.Parameter(torch.zeros(vocab))
        self.out_bias.data[EOS] = eos_bias
        self.encode_calls = 0

    def encode(self, src_tokens: Tensor, patch_images: Tensor | None = None,
               patch_masks: Tensor | None = None) -> ToyEncoderOut:
        self.encode_calls += 1
        keep = src_tokens.ne(PAD).unsqueeze(-1).float()  # (B, S, 1)
        return ToyEncoderOut((self.src_emb[src_tokens] * keep).sum(1) / keep.sum(1))

    def new_cache(self) -> ToyCache:
        return ToyCache()

    def _step(self, state: Tensor, token: Tensor, enc: Tensor) -> Tensor:
        return torch.tanh(state @ self.rec + self.tgt_emb[token] + enc)  # (R, D)

    def decode(self, prev_output_tokens: Tensor, encoder_out: ToyEncoderOut, code_masks: Tensor | None = None,
               cache: ToyCache | None = None) -> Tensor:
        enc = encoder_out.hidden  # one row per sample: each serves R / B consecutive target rows (beams)
        enc = enc.repeat_interleave(prev_output_tokens.size(0) // enc.size(0), dim=0)
        if cache is None:  # teacher forced, (B, T, V)
            state, outs = torch.zeros_like(enc), []
            for t in range(prev_output_tokens.size(1)):
                state = self._step(state, prev_output_tokens[:, t], enc)
                outs.append(state @ self.out + self.out_bias)
            return torch.stack(outs, 1)
        assert cache.length == prev_output_tokens.size(1) - 1, "the generator must pass the full prefix"
        state = cache.state if cache.state is not None else torch.zeros_like(enc)
        assert state.size(0) == prev_output_tokens.size(0) == enc.size(0)
        cache.state = self._step(state, prev_output_tokens[:, -1], enc)
        cache.length += 1
        return (cache.state @ self.out + self.out_bias)[:, None]  # (B, 1, V)


class _Nothing:
    def index_select(self, order: Tensor) -> _Nothing:
        return self


class NoCacheModel(nn.Module):
    """The same toy model, recomputing the full prefix every step (ignores the cache)."""

    def __init__(self, toy: ToyModel) -> None:
        super().__init__()
        self.toy = toy

    def encode(self, *args, **kwargs) -> ToyEncoderOut:
        return self.toy.encode(*args, **kwargs)

    def new_cache(self) -> _Nothing:
        return _Nothing()

    def decode(self, prev_output_tokens, encoder_out, code_masks=None, cache=None) -> Tensor:
        return self.toy.decode(prev_output_tokens, encoder_out)[:, -1:]


def _src(bsz: int = 3, vocab: int = 12, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (bsz, 6), generator=g)
    src[:, 0], src[:, -1] = BOS, EOS
    if bsz > 1:
        src[1, 4:] = PAD  # a padded source
    return src


def _generate(model: nn.Module, src: Tensor, **kw) -> list[list[Hypothesis]]:
    gen_kw = {k: kw.pop(k) for k in ("prefix_tokens", "constraint_trie") if k in kw}
    return SequenceGenerator(model, GenerationConfig(**kw)).generate(src, **gen_kw)


# --------------------------------------------------------------------------- uncached reference
def _ref_lprobs(model: ToyModel, src: Tensor, seq: list[int], step: int, max_len: int, cfg: dict,
                trie: Trie | None = None) -> Tensor:
    """Reference next-token log-probs (V,) after `seq` (starting with <s>), written without the generator."""
    logits = model.decode(torch.tensor([seq]), model.encode(src[None]))[0, -1]
    allowed = torch.ones_like(logits, dtype=torch.bool)
    if cfg.get("constraint_range"):
        s, e = cfg["constraint_range"]
        allowed[4:s] = allowed[e:] = False
    if trie is not None:
        allowed &= torch.zeros_like(allowed).index_fill(0, torch.tensor(trie.next_tokens(seq) or [EOS]), True)
    after = cfg.get("constraints_after_softmax", False)
    lp = torch.log_softmax(logits if after else logits.masked_fill(~allowed, -math.inf), -1)
    lp = lp.masked_fill(~allowed, -math.inf)
    lp[PAD] = -math.inf
    if step >= max_len:
        return torch.full_like(lp, -math.inf).index_fill(0, torch.tensor([EOS]), lp[EOS].item())
    if step < cfg.get("min_len", 0):
        lp[EOS] = -math.inf
    n = cfg.get("no_repeat_ngram_size", 0)
    if n and len(seq) >= n:
        for i in range(len(seq) - n + 1):
            if seq[i:i + n - 1] == seq[len(seq) - n + 1:]:
                lp[seq[i + n - 1]] = -math.inf
    return lp


def _brute_force(model: ToyModel, src: Tensor, max_len: int, cfg: dict, trie: Trie | None = None):
    """Every finite-score sequence ending in </s> within max_len + 1 tokens, best first: [(tokens, score)]."""
    vocab = model.out.size(1)
    out = []
    for length in range(max_len + 1):
        for body in itertools.product([t for t in range(vocab) if t not in (PAD, EOS)], repeat=length):
            seq, total = [BOS], 0.0
            for step, tok in enumerate(list(body) + [EOS]):
                total += _ref_lprobs(model, src, seq, step, max_len, cfg, trie)[tok].item()
                seq.append(tok)
            if total > -math.inf:
                norm = (length + 1) ** cfg.get("len_penalty", 1.0) if cfg.get("normalize_scores", True) else 1.0
                out.append((seq[1:], total / norm))
    return sorted(out, key=lambda x: -x[1])


@pytest.mark.parametrize("vocab,cfg", [
    (5, dict(min_len=0)),
    (5, dict(min_len=2, no_repeat_ngram_size=2, len_penalty=0.5)),
    (6, dict(min_len=1, normalize_scores=False, constraint_range=(4, 5))),  # id 5 masked
    (6, dict(min_len=0, constraint_range=(4, 5), constraints_after_softmax=True)),
])
def test_wide_beam_equals_exhaustive_search(vocab, cfg):
    """With a beam wider than the search space nothing is pruned: all sequences, exact scores."""
    model, max_len = ToyModel(vocab=vocab, seed=3, scale=1.5), 3  # 3 usable ids (0, 3, 4): 40 sequences
    src = _src(1, vocab=vocab)
    expected = _brute_force(model, src[0], max_len, cfg)
    hyps = _generate(model, src, beam_size=40, max_len_b=max_len, **cfg)[0]
    assert [h.tokens.tolist() for h in hyps] == [t for t, _ in expected]
    assert [h.score for h in hyps] == pytest.approx([s for _, s in expected], abs=1e-5)
    for h in hyps:
        norm = len(h.tokens) ** cfg.get("len_penalty", 1.0) if cfg.get("normalize_scores", True) else 1.0
        assert h.positional_scores.sum().item() / norm == pytest.approx(h.score, abs=1e-5)


def test_greedy_equals_uncached_argmax():
    model, max_len = ToyModel(seed=5), 8
    src = _src()
    hyps = _generate(model, src, beam_size=1, max_len_b=max_len, min_len=0)
    for b, hyp in enumerate(hyps):
        seq = [BOS]
        for step in range(max_len + 1):
            seq.append(int(_ref_lprobs(model, src[b], seq, step, max_len, {}).argmax()))
            if seq[-1] == EOS:
                break
        assert len(hyp) == 1 and hyp[0].tokens.tolist() == seq[1:]


@pytest.mark.parametrize("beam_size", [2, 4])
def test_cached_beam_search_equals_uncached(beam_size):
    """Reordering the cache every step gives what recomputing every prefix gives (incl. finished samples)."""
    toy = ToyModel(seed=7, eos_bias=1.0)
    src = _src(4)
    prefix = torch.tensor([[5, 6], [7, PAD], [PAD, PAD], [8, 9]])
    kw = dict(beam_size=beam_size, max_len_b=7, min_len=1, no_repeat_ngram_size=3)
    ToyEncoderOut.selected_sizes = []
    cached = _generate(toy, src, prefix_tokens=prefix, **kw)
    sizes = ToyEncoderOut.selected_sizes  # the encoder output keeps one row per live sample
    assert sizes[0] < 4 and len(sizes) > 1 and sizes == sorted(sizes, reverse=True)  # shrinks
    uncached = _generate(NoCacheModel(toy), src, prefix_tokens=prefix, **kw)
    for hc, hu in zip(cached, uncached):
        assert [h.tokens.tolist() for h in hc] == [h.tokens.tolist() for h in hu]
        assert [h.score for h in hc] == pytest.approx([h.score for h in hu], abs=1e-5)


def test_encodes_once_and_reorders_cache():
    toy = ToyModel(seed=2)
    caches = []
    toy_new_cache = toy.new_cache
    toy.new_cache = lambda: caches.append(toy_new_cache()) or caches[-1]
    _generate(toy, _src(), beam_size=3, max_len_b=5, min_len=5)
    assert toy.encode_calls == 1 and len(caches) == 1 and caches[0].reorders == 5


@pytest.mark.parametrize("min_len,max_len", [(3, 6), (0, 4)])
def test_min_and_max_len(min_len, max_len):
    eager = ToyModel(seed=4, eos_bias=12.0)  # wants to stop at once
    for hyps in _generate(eager, _src(), beam_size=3, max_len_b=max_len, min_len=min_len):
        assert all(len(h.tokens) >= min_len + 1 and h.tokens[-1] == EOS for h in hyps)
        assert any(len(h.tokens) == min_len + 1 for h in hyps)
    for hyps in _generate(eager, _src(), beam_size=1, max_len_b=max_len, min_len=min_len):
        assert len(hyps[0].tokens) == min_len + 1
    reluctant = ToyModel(seed=4, eos_bias=-20.0)  # never wants to stop: </s> forced at step max_len
    for hyps in _generate(reluctant, _src(), beam_size=3, max_len_b=max_len, min_len=min_len):
        assert len(hyps) == 3 and all(len(h.tokens) == max_len + 1 and h.tokens[-1] == EOS for h in hyps)
        assert all(PAD not in h.tokens.tolist() for h in hyps)


def test_max_len_a_scales_with_source_length():
    src = _src()  # padded length 6
    hyps = _generate(ToyModel(seed=4, eos_bias=-20.0), src, beam_size=2, max_len_a=0.5, max_len_b=1)
    assert all(len(h.tokens) == int(0.5 * 6 + 1) + 1 for sample in hyps for h in sample)


def test_no_repeat_ngram():
    model = ToyModel(seed=6, scale=0.5, eos_bias=-20.0)
    model.out_bias.data[7] = 4.0  # likes repeating token 7
    plain = _generate(model, _src(), beam_size=3, max_len_b=10, min_len=0)
    assert any(h.tokens.tolist().count(7) > 3 for h in plain[0])
    for n in (1, 2, 3):
        for sample in _generate(model, _src(), beam_size=3, max_len_b=10, min_len=0, no_repeat_ngram_size=n):
            for h in sample:
                seq = [BOS] + h.tokens.tolist()
                grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
                assert len(grams) == len(set(grams)), seq


def test_forced_prefix_per_sample_length():
    model = ToyModel(seed=8)
    src = _src()
    prefix = [torch.tensor([5, 9, 9]), torch.tensor([], dtype=torch.long), torch.tensor([4])]
    hyps = _generate(model, src, beam_size=3, max_len_b=6, min_len=1, prefix_tokens=prefix)
    for b, (p, sample) in enumerate(zip(prefix, hyps)):
        assert len(sample) == 3
        for h in sample:
            assert h.tokens[:len(p)].tolist() == p.tolist() and h.prefix_len == len(p)
            seq = [BOS]
            for step, tok in enumerate(p.tolist()):  # forced tokens keep their model log-prob
                lp = _ref_lprobs(model, src[b], seq, step, 6, {})[tok]
                assert h.positional_scores[step].item() == pytest.approx(lp.item(), abs=1e-5)
                seq.append(tok)


ANSWERS = [[5, 6], [5, 7, 8], [9], [10, 11, 4, 6], [6, 6]]


def _trie() -> Trie:
    return Trie([BOS] + a + [EOS] for a in ANSWERS)


@pytest.mark.parametrize("sampling", [False, True])
def test_trie_constraint_only_emits_trie_sequences(sampling):
    model = ToyModel(seed=9)
    prefix = torch.tensor([[4, 4], [7, PAD], [PAD, PAD]])
    hyps = _generate(model, _src(), beam_size=4, max_len_b=8, min_len=0, sampling=sampling, seed=0,
                     prefix_tokens=prefix, constraint_trie=_trie())
    for sample in hyps:
        assert sample
        for h in sample:
            answer = h.tokens[h.prefix_len:-1].tolist()
            assert answer in ANSWERS, (h.tokens, h.prefix_len)


@pytest.mark.parametrize("after", [False, True])
def test_trie_wide_beam_scores_every_answer(after):
    """Beam >= #answers: every trie answer comes back, scored over the trie (or the full vocabulary)."""
    model = ToyModel(seed=10)
    src = _src(1)
    cfg = dict(min_len=0, normalize_scores=False, constraints_after_softmax=after)
    hyps = _generate(model, src, beam_size=len(ANSWERS), max_len_b=6, constraint_trie=_trie(), **cfg)[0]
    expected = _brute_force_trie(model, src[0], 6, cfg)
    assert [h.tokens.tolist() for h in hyps] == [t for t, _ in expected]
    assert [h.score for h in hyps] == pytest.approx([s for _, s in expected], abs=1e-5)


def _brute_force_trie(model, src, max_len, cfg):
    out = []
    for ans in ANSWERS:
        seq, total = [BOS], 0.0
        for step, tok in enumerate(ans + [EOS]):
            total += _ref_lprobs(model, src, seq, step, max_len, cfg, _trie())[tok].item()
            seq.append(tok)
        out.append((ans + [EOS], total))
    return sorted(out, key=lambda x: -x[1])


@pytest.mark.parametrize("sampling", [False, True])
def test_constraint_range_and_gen_code(sampling):
    model = ToyModel(vocab=20, seed=11, eos_bias=2.0)
    hyps = _generate(model, _src(vocab=20), beam_size=4, max_len_b=6, min_len=0, sampling=sampling, seed=1,
                     constraint_range=(8, 12))
    emitted = {t for sample in hyps for h in sample for t in h.tokens.tolist()}
    assert emitted <= {0, 2, 3} | set(range(8, 12)) and emitted & set(range(8, 12))
    hyps = _generate(model, _src(vocab=20), beam_size=4, max_len_b=6, min_len=0, sampling=sampling, seed=1,
                     constraint_range=(8, 12), gen_code=True)
    for h in (h for sample in hyps for h in sample):
        assert len(h.tokens) == 7 and set(h.tokens[:-1].tolist()) <= set(range(8, 12))


def test_sampling_reproducible_with_seed_and_varies_across_seeds():
    model = ToyModel(seed=12, scale=1.0)
    kw = dict(beam_size=4, max_len_b=8, min_len=0, sampling=True, temperature=1.5)

    def tokens(seed: int, **extra) -> list:
        return [[h.tokens.tolist() for h in s] for s in _generate(model, _src(), seed=seed, **kw, **extra)]

    assert tokens(0) == tokens(0)
    assert tokens(0) != tokens(1)
    assert len({tuple(t) for t in tokens(0)[0]}) > 1  # the samples of one input differ too
    greedy = [s[0].tokens.tolist() for s in _generate(model, _src(), beam_size=1, max_len_b=8, min_len=0)]
    for extra in (dict(sampling_topk=1), dict(sampling_topp=1e-6)):  # degenerate filters = greedy
        assert all(all(t == g for t in s) for s, g in zip(tokens(3, **extra), greedy))


def test_sampling_scores_are_log_probs():
    model = ToyModel(seed=13, scale=1.0)
    src = _src(1)
    cfg = dict(min_len=0, normalize_scores=False)
    hyps = _generate(model, src, beam_size=5, max_len_b=4, sampling=True, seed=0, sampling_topk=4, **cfg)[0]
    for h in hyps:
        seq, total = [BOS], 0.0
        for step, tok in enumerate(h.tokens.tolist()):
            total += _ref_lprobs(model, src[0], seq, step, 4, cfg)[tok].item()
            seq.append(tok)
        assert h.score == pytest.approx(total, abs=1e-5)


def test_temperature_in_beam_search():
    """Temperature T divides the logits: a model with logits x and T=2 scores like one with logits x/2."""
    hot = _generate(ToyModel(seed=14, scale=4.0), _src(), beam_size=3, max_len_b=5, temperature=2.0)
    cool = _generate(ToyModel(seed=14, scale=2.0), _src(), beam_size=3, max_len_b=5)
    for a, b in zip(hot, cool):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_return_best_only_and_sorted():
    model = ToyModel(seed=15)
    all_hyps = _generate(model, _src(), beam_size=4, max_len_b=6)
    best = _generate(model, _src(), beam_size=4, max_len_b=6, return_all=False)
    for a, b in zip(all_hyps, best):
        assert len(a) == 4 and len(b) == 1 and b[0].tokens.tolist() == a[0].tokens.tolist()
        assert [h.score for h in a] == sorted((h.score for h in a), reverse=True)


def test_config_validation():
    with pytest.raises(ValueError):
        GenerationConfig(beam_size=0)
    with pytest.raises(ValueError):
        GenerationConfig(temperature=0.0)


@pytest.mark.parametrize("max_rows, expected", [(64, 1), (0, 2)])
def test_decoding_loop_threads(max_rows, expected):
    """A few rows decode on one intra-op thread (`single_thread_rows`); the count is restored afterwards, and
    the hypotheses are those of the multi-threaded loop."""
    toy, seen = ToyModel(seed=3), []
    decode = toy.decode
    toy.decode = lambda *a, **k: seen.append(torch.get_num_threads()) or decode(*a, **k)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hyps = _generate(toy, _src(), beam_size=3, max_len_b=5, min_len=2, single_thread_rows=max_rows)
        assert set(seen) == {expected} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    toy.decode = decode
    plain = _generate(toy, _src(), beam_size=3, max_len_b=5, min_len=2, single_thread_rows=0)
    assert [[h.tokens.tolist() for h in s] for s in hyps] == [[h.tokens.tolist() for h in s] for s in plain]
