"""Closed answer sets (VQA answers, SNLI-VE labels, class names): trie, training masks, all-candidate scoring.

Shared by `VQATask`, `SNLIVETask` and `ImageClassifyTask` (spec §3.3, §3.5, §3.7):
- every candidate answer `a` is the token path `[<s>] + encode(" " + a) + [</s>]` in a `Trie`;
- with a decoder prompt `[<s>] + prompt` (prompt_type `prev_output`; just `[<s>]` for `none`),
  `prev = [<s>] + prompt + answer`, `target = [pad] * len(prompt) + answer + [</s>]`;
- the training constraint mask (T, V) is all-False over the prompt positions and, at answer position j,
  allows the trie children of `[<s>] + answer[:j]` (the last one allows `</s>`);
- all-candidate evaluation encodes the source once, then scores every candidate as the SUM of the
  trie-masked log-probs of its answer tokens and `</s>` (no length normalisation), in chunks.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ofa.modules.trie import Trie
from ofa.tasks.base import Sample, Task, build_prompted_target
from ofa.tasks.metrics_understanding import ExactMatchAccuracy


def load_candidates(path: str | Path) -> list[str]:
    """Read a candidate list: a json list of strings, or an `{answer: index}` dict (ordered by index).

    OFA's own `.pkl` files (`trainval_ans2label.pkl`, `class2label_new.pkl`: `{answer: index}`) load
    too; unpickling runs code, so only point this at files you trust.
    """
    if Path(path).suffix == ".pkl":
        with open(path, "rb") as fb:
            data = pickle.load(fb)
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    if isinstance(data, dict):
        return [a for a, _ in sorted(data.items(), key=lambda kv: kv[1])]
    return [str(a) for a in data]


class CandidateSet:
    """The candidate strings, their token ids (no specials) and the trie over `[<s>] + ids + [</s>]`."""

    def __init__(self, tokenizer: Any, answers: Sequence[str]) -> None:
        self.answers = list(dict.fromkeys(answers))  # unique, order kept
        if not self.answers:
            raise ValueError("a candidate set needs at least one answer")
        self.bos, self.eos, self.pad = tokenizer.bos, tokenizer.eos, tokenizer.pad
        self.vocab_size = len(tokenizer)
        self.tokens = [list(tokenizer.encode(" " + a)) for a in self.answers]
        self.trie = Trie([self.bos, *ids, self.eos] for ids in self.tokens)
        self.index = {a: i for i, a in enumerate(self.answers)}
        self._children: dict[tuple[int, ...], Tensor] = {}

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self.index

    def allowed(self, prefix: Sequence[int]) -> Tensor:
        """Trie children of `[<s>] + prefix` as a long tensor (cached per prefix: the root list is long)."""
        key = tuple(int(t) for t in prefix)
        if key not in self._children:
            self._children[key] = torch.tensor(self.trie.next_tokens([self.bos, *key]), dtype=torch.long)
        return self._children[key]

    def answer_rows(self, answer_tokens: Sequence[int], vocab_size: int | None = None) -> Tensor:
        """(A+1, V) bool: row j allows the trie children of `[<s>] + answer[:j]` (the last row: `</s>`).

        From the first position whose true next token is not a child (an answer outside the set, or
        truncated), rows are all-True, so the loss stays finite.
        """
        answer = [int(t) for t in answer_tokens]
        rows = torch.ones(len(answer) + 1, vocab_size or self.vocab_size, dtype=torch.bool)
        for j, nxt in enumerate([*answer, self.eos]):
            children = self.allowed(answer[:j])
            if not bool(children.eq(nxt).any()):
                break
            rows[j] = False
            rows[j, children] = True
        return rows


def build_constraint_mask(candidates: CandidateSet, answer: Tensor, prompt_len: int) -> Tensor:
    """(T, V) training mask, T = prompt_len + A + 1: prompt positions all-False, answer rows from the trie.

    `prompt_len` = number of target positions before the answer (= len(decoder_prompt) - 1).
    """
    rows = candidates.answer_rows(answer.tolist())  # (A+1, V)
    return torch.cat([rows.new_zeros(prompt_len, rows.size(1)), rows])


def _chunk_inputs(prompts: Sequence[Tensor], cand_tokens: Sequence[Tensor], eos: int, pad: int
                  ) -> tuple[Tensor, Tensor]:
    """prev/target (B*K, T) for every (sample, candidate) pair, sample-major."""
    pairs = [build_prompted_target(prompt, cand, eos, pad) for prompt in prompts for cand in cand_tokens]
    prev = pad_sequence([p for p, _ in pairs], batch_first=True, padding_value=pad)  # (B*K, T)
    target = pad_sequence([t for _, t in pairs], batch_first=True, padding_value=pad)  # (B*K, T)
    return prev, target


def _chunk_mask(candidates: CandidateSet, chunk: range, vocab: int, device: torch.device) -> Tensor:
    """(K, L, V) bool, L = longest answer + 1: trie rows of each candidate, all-True past its `</s>`.

    Built on `device` with two indexed writes from (candidate, position, token) index lists.
    """
    lengths = [len(candidates.tokens[c]) + 1 for c in chunk]  # rows per candidate: answer + </s>
    mask = torch.ones(len(chunk), max(lengths), vocab, dtype=torch.bool, device=device)
    ks, js, vs = [], [], []
    for k, c in enumerate(chunk):
        for j in range(lengths[k]):
            kids = candidates.allowed(candidates.tokens[c][:j])
            ks.append(torch.full_like(kids, k))
            js.append(torch.full_like(kids, j))
            vs.append(kids)
    row_k = torch.tensor([k for k, n in enumerate(lengths) for _ in range(n)], device=device)
    row_j = torch.tensor([j for n in lengths for j in range(n)], device=device)
    mask[row_k, row_j] = False  # the candidates' own rows: only their trie children
    mask[torch.cat(ks).to(device), torch.cat(js).to(device), torch.cat(vs).to(device)] = True
    return mask


def _score_chunk(model: Any, encoder_out: Any, prompts: Sequence[Tensor], candidates: CandidateSet,
                 chunk: range) -> Tensor:
    """(B, K) candidate scores of one chunk; only the answer positions of each row are normalised."""
    device, bsz, k = prompts[0].device, len(prompts), len(chunk)
    cand_tokens = [torch.tensor(candidates.tokens[c], dtype=torch.long, device=device) for c in chunk]
    prev, target = _chunk_inputs(prompts, cand_tokens, candidates.eos, candidates.pad)  # (R, T), R = B*K
    rows = torch.arange(bsz, device=device).repeat_interleave(k)  # (R,)
    logits = model.decode(prev, encoder_out.index_select(rows))  # (R, T, V)
    vocab = logits.size(-1)
    mask = _chunk_mask(candidates, chunk, vocab, device)  # (K, L, V)
    offsets = torch.tensor([p.numel() - 1 for p in prompts], device=device).repeat_interleave(k)  # (R,)
    pos = offsets[:, None] + torch.arange(mask.size(1), device=device)  # (R, L) answer positions
    logits = logits.gather(1, pos[..., None].expand(-1, -1, vocab)).float()  # (R, L, V)
    logits = logits.view(bsz, k, *mask.shape[1:]).masked_fill(~mask, float("-inf")).view(bsz * k, -1, vocab)
    target = target.gather(1, pos)  # (R, L); pad past each candidate's </s>
    tok = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (R, L)
    return tok.masked_fill(target.eq(candidates.pad), 0.0).sum(1).view(bsz, k)


@torch.no_grad()
def score_candidates(model: Any, encoder_out: Any, decoder_prompts: Sequence[Tensor], candidates: CandidateSet,
                     chunk_size: int = 20) -> Tensor:
    """(B, C) sum of trie-masked log-probs of each candidate's tokens + `</s>`, given the encoded batch.

    `model.decode(prev, encoder_out)` -> logits (R, T, V); `encoder_out.index_select(rows)` repeats samples.
    `chunk_size` candidates are scored per decoder call (OFA's `valid_batch_size`, 20).
    """
    chunks = [range(s, min(s + chunk_size, len(candidates))) for s in range(0, len(candidates), chunk_size)]
    return torch.cat([_score_chunk(model, encoder_out, decoder_prompts, candidates, c) for c in chunks], 1)


def predict_candidates(model: Any, batch: dict[str, Any], candidates: CandidateSet, chunk_size: int = 20
                       ) -> tuple[list[str], Tensor]:
    """Encode the batch once and return the best candidate of each sample and all scores (B, C)."""
    encoder_out = model.encode(batch["src_tokens"], patch_images=batch.get("patch_images"),
                               patch_masks=batch.get("patch_masks"))
    device = batch["src_tokens"].device
    prompts = [torch.as_tensor(p, dtype=torch.long, device=device) for p in batch["decoder_prompts"]]
    scores = score_candidates(model, encoder_out, prompts, candidates, chunk_size)  # (B, C)
    return [candidates.answers[i] for i in scores.argmax(1).tolist()], scores


# ---- the task side shared by VQA, SNLI-VE and image classification ---------------------------------------
PROMPT_TYPES = ("none", "src", "prev_output")


def build_decoder_prompt(source: Tensor, prompt_type: str, bos: int) -> Tensor:
    """OFA's decoder prompt (spec §3.1): `[<s>]` (none), the full source (src), the source without `</s>`."""
    if prompt_type == "none":
        return source.new_tensor([bos])
    if prompt_type == "src":
        return source.clone()
    if prompt_type == "prev_output":
        return source[:-1].clone()
    raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}")


class ClosedSetTask(Task):
    """A task whose answers come from a fixed candidate list: trie-masked training, all-candidate eval.

    Subclasses implement `candidate_list()` and `preprocess` (calling `build_sample`). The config needs
    `prompt_type`, `use_constraint` and `candidate_chunk_size`.
    """

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        super().__init__(tokenizer, cfg)
        self._candidates: CandidateSet | None = None

    def candidate_list(self) -> list[str]:
        raise NotImplementedError

    @property
    def candidates(self) -> CandidateSet:
        """Loaded on first use (the candidate file may be written after the task is built)."""
        if self._candidates is None:
            self._candidates = CandidateSet(self.tokenizer, self.candidate_list())
        return self._candidates

    def build_sample(self, raw: dict[str, Any], source: Tensor, answer: str, split: str, conf: float = 1.0,
                     meta: dict[str, Any] | None = None, sample_id: str | None = None) -> Sample:
        """`Sample` with the prompt-aware decoder prompt, the trie constraint mask and `meta["answer"]`."""
        answer_ids = self.encode_text(" " + answer)[: self.cfg.max_tgt_length]  # (A,)
        decoder_prompt = build_decoder_prompt(source, self.cfg.prompt_type, self.tokenizer.bos)  # (P,)
        mask = None
        if self.cfg.use_constraint:
            mask = build_constraint_mask(self.candidates, answer_ids, decoder_prompt.numel() - 1)  # (T, V)
        image = self.transform(split)(raw["image"])[0] if raw.get("image") is not None else None  # (3, S, S)
        return self.make_sample(raw, source, answer_ids, image, decoder_prompt=decoder_prompt, conf=conf,
                                constraint_mask=mask, meta={"answer": answer, **(meta or {})},
                                sample_id=sample_id)

    def predict(self, model: Any, batch: dict[str, Any]) -> list[str]:
        """All-candidate prediction (encoder once, every candidate scored, argmax)."""
        preds, _ = predict_candidates(model, batch, self.candidates, self.cfg.candidate_chunk_size)
        return preds

    def build_metrics(self) -> dict[str, Any]:
        return {"acc": ExactMatchAccuracy()}

    @torch.no_grad()
    def evaluate(self, model: Any, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        """Top-1 accuracy of the all-candidate prediction against `meta["answer"]`."""
        preds = self.predict(model, batch)
        labels = [m["answer"] for m in batch["meta"]]
        metrics["acc"].update(preds, labels)
        return [{"id": i, "prediction": p, "label": t, "references": [t]}
                for i, p, t in zip(batch["id"], preds, labels)]
