"""VQA as OFA's `vqa_gen` (spec §3.3): closed-vocabulary answer generation, trie-constrained.

Source `" {question}"` (pre_question, no instruction). Target: the highest-confidence answer, its
confidence weighting the loss. prompt_type `prev_output`: prev = `[<s>] + question + answer`, target =
pads over the question, then `answer + </s>`. A trie over every candidate answer constrains training
(per-position masks) and decoding. Evaluation: `allcand` (every candidate scored, no length
normalisation) or `beamsearch` (beam 5, unnormalised, question forced as prefix, trie-constrained).
Metrics: `score` (OFA's soft score: the confidence of the prediction in the `answers` dict) and `acc`
(the official VQA accuracy; needs the 10 raw human answers as `human_answers: [str]` in the shard's vqa
item, NaN when no sample has them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.tasks.base import Sample, TaskConfig
from ofa.tasks.candidates import ClosedSetTask, load_candidates
from ofa.tasks.metrics_understanding import VQAAccuracy, VQASoftScore
from ofa.tasks.text import pre_question

INFERENCE_TYPES = ("allcand", "beamsearch")


def vqa_generation_defaults() -> GenerationConfig:
    """OFA's VQA beam search: beam 5, unnormalised scores, temperature 1."""
    return GenerationConfig(beam_size=5, max_len_a=0.0, max_len_b=200, min_len=1, normalize_scores=False)


@dataclass
class VQAConfig(TaskConfig):
    """VQA settings; lengths: question in words, answer in BPE tokens (as OFA)."""

    image_size: int = 480
    max_src_length: int = 80  # question words
    max_tgt_length: int = 30  # answer BPE tokens
    prompt_type: str = "prev_output"
    add_object: bool = False  # append " object: {labels}" (the recipes' --add-object; needs `objects` strings)
    max_object_length: int = 30  # object labels kept
    answers_file: str | None = None  # candidates: json list, {answer: index} json, or OFA's .pkl
    answers: list[str] | None = None  # inline candidates; override answers_file
    use_constraint: bool = True  # trie masks at train time
    inference: str = "allcand"  # allcand | beamsearch
    candidate_chunk_size: int = 20  # candidates per decoder call in allcand (OFA's valid_batch_size)
    generation: GenerationConfig = field(default_factory=vqa_generation_defaults)


def best_answer(answers: dict[str, float], allowed: Any = None) -> tuple[str, float] | None:
    """Highest-confidence answer (first on ties), restricted to `allowed` when given."""
    pool = {a: c for a, c in answers.items() if allowed is None or a in allowed}
    if not pool:
        return None
    answer = max(pool, key=pool.get)
    return answer, pool[answer]


class VQATask(ClosedSetTask):
    """OFA's `vqa_gen` fine-tuning task (module docstring)."""

    name = "vqa"
    monitor = "score"
    config_class = VQAConfig

    def __init__(self, tokenizer: Any, cfg: VQAConfig) -> None:
        if cfg.inference not in INFERENCE_TYPES:
            raise ValueError(f"inference must be one of {INFERENCE_TYPES}, got {cfg.inference!r}")
        super().__init__(tokenizer, cfg)

    def candidate_list(self) -> list[str]:
        if self.cfg.answers:
            return list(self.cfg.answers)
        if not self.cfg.answers_file:
            raise ValueError("vqa: set task.answers_file (the dataset's answers.json) or task.answers")
        return load_candidates(self.cfg.answers_file)

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """One question of the image; training keeps only answers in the candidate set (None if none is)."""
        if not raw.get("vqa") or raw.get("image") is None:
            return None
        item = self.pick(raw["vqa"], split)
        answers = {str(a): float(c) for a, c in item["answers"].items()}
        constrained = split == "train" and self.cfg.use_constraint
        chosen = best_answer(answers, self.candidates.index if constrained else None)
        if chosen is None:
            return None
        question = pre_question(item["question"], self.cfg.max_src_length)
        source = self.encode_text(self.source_text(question, raw.get("objects")), bos=True, eos=True)
        meta = {"question": question, "answers": answers, "human_answers": item.get("human_answers")}
        return self.build_sample(raw, source, chosen[0], split, conf=chosen[1], meta=meta,
                                 sample_id=item.get("question_id"))

    def source_text(self, question: str, objects: Any = None) -> str:
        """`" {question}"`, plus `" object: {o1 o2 ...}"` with add_object and object-label strings."""
        labels = [o for o in objects or [] if isinstance(o, str)][: self.cfg.max_object_length]
        if self.cfg.add_object and labels:
            return f" {question} object: {' '.join(labels)}"
        return f" {question}"

    def build_metrics(self) -> dict[str, Any]:
        return {"score": VQASoftScore(), "acc": VQAAccuracy()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        preds = self.predict(model, batch) if self.cfg.inference == "allcand" else self.beam_search(model, batch)
        metas = batch["meta"]
        metrics["score"].update(preds, [m["answers"] for m in metas])
        humans = [(p, m["human_answers"]) for p, m in zip(preds, metas) if m.get("human_answers")]
        metrics["acc"].update([p for p, _ in humans], [h for _, h in humans])  # NaN if no data has them
        return [{"id": i, "question": m["question"], "prediction": p, "answer": m["answer"],
                 "references": sorted(m["answers"], key=m["answers"].get, reverse=True)}  # most confident first
                for i, m, p in zip(batch["id"], metas, preds)]

    def beam_search(self, model: torch.nn.Module, batch: dict[str, Any]) -> list[str]:
        """Beam search with the decoder prompt forced as prefix and the answer trie as constraint."""
        tok = self.tokenizer
        generator = SequenceGenerator(model, self.cfg.generation, pad=tok.pad, bos=tok.bos, eos=tok.eos)
        prefix = [torch.as_tensor(p)[1:] for p in batch["decoder_prompts"]]  # without <s>
        hyps = generator.generate(batch["src_tokens"], batch.get("patch_images"), batch.get("patch_masks"),
                                  prefix_tokens=prefix, constraint_trie=self.candidates.trie)
        return [self.decode_answer(h[0].tokens[h[0].prefix_len:]) if h else "" for h in hyps]

    def decode_answer(self, tokens: torch.Tensor) -> str:
        ids = [t for t in tokens.tolist() if t != self.tokenizer.eos]
        return self.tokenizer.decode(ids).strip()
