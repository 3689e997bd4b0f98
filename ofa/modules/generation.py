"""Batched, cached sequence generation with OFA's (fairseq-style) semantics (spec §9).

`SequenceGenerator.generate` runs beam search (`beam_size=1` is greedy) or sampling. The source is
encoded once and kept at one row per sample: `model.decode` gets batch x beam target rows, each group of
`beam_size` consecutive rows sharing its sample's encoder row (the encoder output is only shrunk, with
`index_select`, when samples finish). The decoder cache is reordered after every step, so each step
computes one position for all live hypotheses.

Semantics (the ones the OFA reference fixtures pin down):
- decoding starts from `<s>`; `max_len = int(max_len_a * S + max_len_b)` with S the padded source length;
  step i (0-based) produces token i+1 of the sequence, and at step `max_len` only `</s>` is allowed, so a
  hypothesis holds at most `max_len + 1` tokens including `</s>`;
- `<pad>` is never chosen; `min_len` blocks `</s>` for the first `min_len` steps; scores are cumulative
  log-probs, divided by `length ** len_penalty` when `normalize_scores` (length = tokens incl. `</s>`,
  excl. `<s>`, incl. the forced prefix);
- a sample stops as soon as it has `beam_size` finished hypotheses (fairseq's rule): at each step only
  `</s>` candidates among the best `beam_size` of the `2 * beam_size` candidates finish;
- `prefix_tokens` (B, P), right-padded with pad and WITHOUT the leading `<s>`, are forced step by step;
- `constraint_trie` masks the logits to the trie children of `[<s>] + answer`, the answer being the tokens
  generated after the sample's forced prefix; `constraint_range=(s, e)` masks logits of ids in
  [4, s) and [e, V) at every step.

`Hypothesis.tokens` excludes `<s>`, includes the forced prefix (its first `prefix_len` tokens) and ends
with `</s>`; `positional_scores` holds the log-prob of each of those tokens.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ofa.modules.decoder import DecoderCache
from ofa.modules.logits import NUM_SPECIALS, banned_ngram_mask, range_allowed_mask, top_k_top_p_filter
from ofa.modules.logits import trie_allowed_mask
from ofa.modules.trie import Trie
from ofa.modules.workspace import Workspace

NEG_INF = float("-inf")


@dataclass
class GenerationConfig:
    """Decoding settings; the names follow fairseq's generation options (spec §9)."""

    beam_size: int = 5  # beams, or independent samples when `sampling`; 1 = greedy
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    len_penalty: float = 1.0
    normalize_scores: bool = True  # False = fairseq's --unnormalized
    no_repeat_ngram_size: int = 0
    sampling: bool = False
    sampling_topk: int = -1  # <= 0: off
    sampling_topp: float = -1.0  # <= 0: off
    temperature: float = 1.0  # divides the logits, in beam search too
    seed: int | None = None  # sampling RNG seed (a fresh torch.Generator per `generate` call)
    constraint_range: tuple[int, int] | None = None
    gen_code: bool = False  # ban ids 0..3 (incl. </s>) before the last step: image-code generation
    constraints_after_softmax: bool = False  # mask range/trie on log-probs, not logits (OFA's --zero-shot)
    return_all: bool = True  # all finished hypotheses (best first) or only the best
    # CPU: the decoding loop runs on one intra-op thread when it starts with at most this many hypotheses
    # (rows); 0 = never (the default: it pays only on a busy machine). See `step_threads`.
    single_thread_rows: int = 0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.sampling_topp > 1:
            raise ValueError(f"sampling_topp must be <= 1, got {self.sampling_topp}")
        if self.constraint_range is not None:
            self.constraint_range = (int(self.constraint_range[0]), int(self.constraint_range[1]))


@contextmanager
def step_threads(rows: int, max_rows: int, device: torch.device) -> Iterator[None]:
    """One intra-op thread for the block when it decodes at most `max_rows` rows on the CPU.

    A cached decoder step on a few rows is hundreds of small ops (8-40 rows x 256 features: 10-100 us each),
    and each multi-threaded op pays an OpenMP fork/join; when the machine is busy, that join waits for a
    descheduled thread (~5 ms per op measured here at load 3, 2 threads), which made decoding 1.4-2x slower
    than on one thread. On an idle machine it is the other way round (paired bench, beam-5 1.70x -> 1.32x of
    the reference, greedy 1.63x -> 1.35x; experiments/README.md, issue 12), so it is off by default. The
    encoder keeps every thread. The previous thread count is restored on exit.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or rows > max_rows or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Hypothesis:
    """One finished sequence (on CPU). `tokens[:prefix_len]` is the forced prefix."""

    tokens: Tensor  # (L,) long, excl. <s>, ends with </s>
    score: float  # sum of positional_scores, / L ** len_penalty if normalized
    positional_scores: Tensor  # (L,) float, log-prob of each token
    prefix_len: int = 0


@dataclass
class _Beams:
    """Live hypotheses of the N unfinished samples, K beams each, flattened to N*K rows."""

    sample_ids: list[int]  # (N,) index of each live sample in the input batch
    tokens: Tensor  # (N*K, t+1), column 0 = <s>
    positional: Tensor  # (N*K, t) log-prob of each generated token
    cum: Tensor  # (N*K,) cumulative log-prob, -inf = dead beam
    prefix: Tensor | None  # (N*K, P) forced tokens, pad = not forced
    prefix_len: Tensor  # (N*K,)
    code_masks: Tensor | None  # (N*K,)
    enc: Any  # encoder output, N rows (one per live sample)
    cache: Any  # decoder cache, N*K rows


class SequenceGenerator:
    """Beam search / sampling over an encoder-decoder with `encode`, `new_cache` and cached `decode`."""

    def __init__(self, model: nn.Module, cfg: GenerationConfig | None = None, pad: int = 1, bos: int = 0,
                 eos: int = 2) -> None:
        self.model = model
        self.cfg = cfg if cfg is not None else GenerationConfig()
        self.pad, self.bos, self.eos = pad, bos, eos

    @torch.no_grad()
    def generate(self, src_tokens: Tensor, patch_images: Tensor | None = None, patch_masks: Tensor | None = None,
                 prefix_tokens: Tensor | Sequence[Tensor] | None = None, constraint_trie: Trie | None = None,
                 code_masks: Tensor | None = None) -> list[list[Hypothesis]]:
        """Decode every sample of the batch; per sample the finished hypotheses, best first.

        Call `model.eval()` first (dropout). A sample may return fewer than `beam_size` hypotheses (or none)
        only when the constraints leave no finite-score continuation.
        """
        bsz = src_tokens.size(0)
        max_len = int(self.cfg.max_len_a * src_tokens.size(1) + self.cfg.max_len_b)
        enc = self.model.encode(src_tokens, patch_images, patch_masks)
        beams = self._start(enc, bsz, src_tokens.device, prefix_tokens, code_masks)
        with step_threads(beams.tokens.size(0), self.cfg.single_thread_rows, src_tokens.device):
            return self._search(beams, bsz, max_len, constraint_trie)

    def _search(self, beams: _Beams, bsz: int, max_len: int, constraint_trie: Trie | None) -> list[list[Hypothesis]]:
        """The decoding loop: one cached decoder step per position, until every sample is done."""
        rng = self._rng(beams.tokens.device)
        finished: list[list[Hypothesis]] = [[] for _ in range(bsz)]
        work = Workspace()  # the log-probs of each step
        for step in range(max_len + 1):
            logits = self.model.decode(beams.tokens, beams.enc, code_masks=beams.code_masks, cache=beams.cache)
            lprobs = self._log_probs(logits[:, -1].float(), beams, step, max_len, constraint_trie, work)  # (N*K, V)
            scores, tokens, origin = self._candidates(lprobs, beams.cum, rng)  # (N, C) each
            self._finalize(finished, beams, lprobs, scores, tokens, origin, step)
            done = torch.tensor([len(finished[i]) >= self.cfg.beam_size or step >= max_len
                                 for i in beams.sample_ids], device=scores.device)  # (N,)
            beams = self._advance(beams, lprobs, scores, tokens, origin, done)
            if beams is None:
                break
        return [self._ranked(hyps) for hyps in finished]

    # ------------------------------------------------------------------ setup
    def _start(self, enc: Any, bsz: int, device: torch.device, prefix_tokens: Tensor | Sequence[Tensor] | None,
               code_masks: Tensor | None) -> _Beams:
        """bsz*K beams, all `<s>`; the encoder output keeps one row per sample."""
        k = self.cfg.beam_size
        rows = torch.arange(bsz, device=device).repeat_interleave(k)  # (B*K,)
        cum = torch.zeros(bsz, k, device=device)
        if not self.cfg.sampling:
            cum[:, 1:] = NEG_INF  # identical beams: only beam 0 may extend at step 0
        prefix = self._pad_prefix(prefix_tokens, device)
        prefix = prefix[rows] if prefix is not None else None  # (B*K, P)
        plen = prefix.ne(self.pad).sum(1) if prefix is not None else torch.zeros_like(rows)
        return _Beams(
            sample_ids=list(range(bsz)), tokens=torch.full((bsz * k, 1), self.bos, dtype=torch.long, device=device),
            positional=torch.zeros(bsz * k, 0, device=device), cum=cum.view(-1), prefix=prefix, prefix_len=plen,
            code_masks=code_masks[rows] if code_masks is not None else None, enc=enc,
            cache=self._new_cache())

    def _new_cache(self) -> Any:
        """The model's decoder cache; an `OFADecoder` cache returns each step's logits in one reused buffer."""
        cache = self.model.new_cache()
        if isinstance(cache, DecoderCache):
            cache.reuse_logits = True  # the search reads a step's logits before the next step
        return cache

    def _pad_prefix(self, prefix_tokens: Tensor | Sequence[Tensor] | None, device: torch.device) -> Tensor | None:
        if prefix_tokens is None or isinstance(prefix_tokens, Tensor):
            return prefix_tokens.to(device) if prefix_tokens is not None and prefix_tokens.size(1) else None
        if not any(len(p) for p in prefix_tokens):
            return None
        return pad_sequence([torch.as_tensor(p, dtype=torch.long) for p in prefix_tokens], batch_first=True,
                            padding_value=self.pad).to(device)

    def _rng(self, device: torch.device) -> torch.Generator | None:
        if not self.cfg.sampling or self.cfg.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.cfg.seed)

    # ------------------------------------------------------------------ one step
    def _log_probs(self, logits: Tensor, beams: _Beams, step: int, max_len: int, trie: Trie | None,
                   work: Workspace) -> Tensor:
        """Masked, temperature-scaled next-token log-probs (N*K, V) for the current step (in `work`)."""
        forced = self._forced_tokens(beams, step) if step < max_len else None  # (N*K,) pad = free
        free = forced.eq(self.pad) if forced is not None else None  # None = every row is free
        allowed = self._allowed(beams, free, step >= max_len, trie, logits.size(1))  # (N*K, V) | None
        if allowed is not None and not self.cfg.constraints_after_softmax:
            logits = logits.masked_fill_(~allowed, NEG_INF)  # in place: the step's own buffer
        if self.cfg.temperature != 1.0:
            logits = logits.div_(self.cfg.temperature)
        lprobs = torch.log_softmax(logits, dim=-1, out=work.get("lprobs", logits.shape, logits.dtype, logits.device))
        if allowed is not None:  # a row with nothing allowed is NaN after the softmax
            if self.cfg.constraints_after_softmax:
                lprobs.masked_fill_(~allowed, NEG_INF)
            lprobs.masked_fill_(lprobs.isnan(), NEG_INF)
        lprobs[:, self.pad] = NEG_INF
        if step >= max_len:  # only </s>
            eos = lprobs[:, self.eos].clone()
            lprobs.fill_(NEG_INF)[:, self.eos] = eos
            return lprobs
        self._ban_(lprobs, beams, step, free)
        if free is not None and not bool(free.all()):  # forced rows keep only their prefix token
            keep = torch.nn.functional.one_hot(forced, lprobs.size(1)).bool() | free[:, None]
            lprobs.masked_fill_(~keep, NEG_INF)
        return lprobs

    def _allowed(self, beams: _Beams, free: Tensor | None, last: bool, trie: Trie | None,
                 vocab: int) -> Tensor | None:
        """(N*K, V) ids allowed by `constraint_range` and the trie (the trie only after the forced prefix)."""
        allowed = None
        if self.cfg.constraint_range is not None:
            rows = beams.tokens.size(0)
            allowed = range_allowed_mask(vocab, *self.cfg.constraint_range, device=beams.tokens.device)
            allowed = allowed.expand(rows, -1)
        if trie is not None:
            in_trie = self._trie_allowed(trie, beams, vocab, last)
            in_trie = in_trie if free is None else in_trie | ~free[:, None]
            allowed = in_trie if allowed is None else allowed & in_trie
        return allowed

    def _ban_(self, lprobs: Tensor, beams: _Beams, step: int, free: Tensor | None) -> None:
        """Set to -inf, in place, the ids banned at this step in free rows: min_len, gen_code, n-gram blocking."""
        rows = slice(None) if free is None else free
        if step < self.cfg.min_len:
            lprobs[rows, self.eos] = NEG_INF
        if self.cfg.gen_code:
            lprobs[rows, :NUM_SPECIALS] = NEG_INF
        if self.cfg.no_repeat_ngram_size > 0:
            banned = banned_ngram_mask(beams.tokens, self.cfg.no_repeat_ngram_size, lprobs.size(1))  # (N*K, V)
            lprobs.masked_fill_(banned if free is None else banned & free[:, None], NEG_INF)

    def _forced_tokens(self, beams: _Beams, step: int) -> Tensor | None:
        if beams.prefix is None or step >= beams.prefix.size(1):
            return None
        return beams.prefix[:, step]

    def _trie_allowed(self, trie: Trie, beams: _Beams, vocab: int, last: bool) -> Tensor:
        """(N*K, V) trie children of `[<s>] + answer so far` (the answer starts after the forced prefix)."""
        tokens, plen = beams.tokens.tolist(), beams.prefix_len.tolist()
        prefixes = [[self.bos] + row[1 + n:] for row, n in zip(tokens, plen)]
        return trie_allowed_mask(trie, prefixes, vocab, fallback=self.eos, always=self.eos if last else None,
                                 device=beams.tokens.device)

    def _candidates(self, lprobs: Tensor, cum: Tensor, rng: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Candidate (cumulative score, token, source beam), each (N, C), best first for beam search."""
        k = self.cfg.beam_size
        rows, vocab = lprobs.shape
        n = rows // k
        if self.cfg.sampling:
            probs = top_k_top_p_filter(lprobs, self.cfg.sampling_topk, self.cfg.sampling_topp).exp()  # (N*K, V)
            probs[probs.sum(-1).eq(0), self.eos] = 1.0  # nothing allowed: draw a -inf </s> (the beam dies)
            tokens = torch.multinomial(probs, 1, generator=rng)  # (N*K, 1)
            scores = cum + lprobs.gather(1, tokens).squeeze(1)
            origin = torch.arange(k, device=lprobs.device).expand(n, k)
            return scores.view(n, k), tokens.view(n, k), origin
        # the best 2K of a sample's K*V continuations are among the best 2K of each beam's V: rank each row
        # first, then the K*2K survivors (adding a row's score does not change the order within the row)
        per_row = min(2 * k, vocab)
        best, token = lprobs.topk(per_row, dim=1)  # (N*K, c)
        total = (cum[:, None] + best).view(n, k * per_row)  # (N, K*c)
        scores, idx = total.topk(min(2 * k, k * per_row), dim=1)  # (N, C)
        return scores, token.view(n, k * per_row).gather(1, idx), idx // per_row

    def _finalize(self, finished: list[list[Hypothesis]], beams: _Beams, lprobs: Tensor, scores: Tensor,
                  tokens: Tensor, origin: Tensor, step: int) -> None:
        """Store the `</s>` candidates among the best K of each sample, up to K hypotheses per sample."""
        k = self.cfg.beam_size
        is_eos = tokens[:, :k].eq(self.eos) & scores[:, :k].isfinite()  # (N, K)
        if not bool(is_eos.any()):
            return
        slots = torch.tensor([k - len(finished[i]) for i in beams.sample_ids], device=is_eos.device)  # (N,)
        accept = is_eos & (is_eos.long().cumsum(1) <= slots[:, None])
        n_idx, c_idx = accept.nonzero(as_tuple=True)
        rows = n_idx * k + origin[n_idx, c_idx]  # (F,)
        eos = torch.full((rows.numel(), 1), self.eos, dtype=torch.long, device=rows.device)
        hyp_tokens = torch.cat([beams.tokens[rows, 1:], eos], 1).cpu()  # (F, step+1)
        hyp_pos = torch.cat([beams.positional[rows], lprobs[rows, self.eos][:, None]], 1).cpu()  # (F, step+1)
        hyp_scores = scores[n_idx, c_idx]
        if self.cfg.normalize_scores:
            hyp_scores = hyp_scores / (step + 1) ** self.cfg.len_penalty
        for n, toks, pos, score, plen in zip(n_idx.tolist(), hyp_tokens, hyp_pos, hyp_scores.tolist(),
                                             beams.prefix_len[rows].tolist()):
            finished[beams.sample_ids[n]].append(Hypothesis(toks, score, pos, min(plen, step + 1)))

    def _advance(self, beams: _Beams, lprobs: Tensor, scores: Tensor, tokens: Tensor, origin: Tensor,
                 done: Tensor) -> _Beams | None:
        """Keep the best K non-`</s>` candidates of each unfinished sample; drop finished samples."""
        k = self.cfg.beam_size
        n, c = scores.shape
        valid = tokens.ne(self.eos) & scores.isfinite()  # (N, C)
        done = done | ~valid.any(1)  # nothing left to extend
        keep = (~done).nonzero().squeeze(1)  # (N',)
        if keep.numel() == 0:
            return None
        rank = torch.arange(c, device=scores.device) + c * (~valid[keep]).long()  # invalid ones last
        pick = rank.topk(k, dim=1, largest=False).indices  # (N', K)
        new_tokens = tokens[keep].gather(1, pick)  # (N', K)
        new_cum = scores[keep].gather(1, pick).masked_fill(~valid[keep].gather(1, pick), NEG_INF)
        rows = (keep[:, None] * k + origin[keep].gather(1, pick)).view(-1)  # (N'*K,) source row of each beam
        new_pos = lprobs[rows, new_tokens.view(-1)]  # (N'*K,)
        return self._reorder(beams, rows, keep, new_tokens.view(-1), new_pos, new_cum.view(-1))

    def _reorder(self, beams: _Beams, rows: Tensor, keep: Tensor, new_tokens: Tensor, new_pos: Tensor,
                 new_cum: Tensor) -> _Beams:
        """Gather the surviving rows, append the new tokens, reorder the cache (and shrink the encoder)."""
        enc, ids = beams.enc, beams.sample_ids
        if keep.numel() < len(beams.sample_ids):  # some samples finished: drop their encoder rows
            enc = enc.index_select(keep)
            ids = [ids[i] for i in keep.tolist()]
        same = rows.numel() == beams.tokens.size(0)
        same = same and torch.equal(rows, torch.arange(rows.numel(), device=rows.device))
        reordered = None if same else beams.cache.index_select(rows)  # in place or a new cache
        return _Beams(
            sample_ids=ids, tokens=torch.cat([beams.tokens[rows], new_tokens[:, None]], 1),
            positional=torch.cat([beams.positional[rows], new_pos[:, None]], 1), cum=new_cum,
            prefix=beams.prefix[rows] if beams.prefix is not None else None, prefix_len=beams.prefix_len[rows],
            code_masks=beams.code_masks[rows] if beams.code_masks is not None else None, enc=enc,
            cache=reordered if reordered is not None else beams.cache)

    def _ranked(self, hyps: list[Hypothesis]) -> list[Hypothesis]:
        ranked = sorted(hyps, key=lambda h: h.score, reverse=True)
        return ranked if self.cfg.return_all else ranked[:1]
