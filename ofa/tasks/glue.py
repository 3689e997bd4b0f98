"""GLUE as OFA's `cola, sst2, mnli, rte, qnli, mrpc, qqp` tasks (spec §3.8): one answer word per text (pair).

Text-only. Each sentence is lower-cased and cut to `max_src_length` words; the source is the task's prompt
(`PROMPTS`), the answer a single BPE token (" yes", " no", " maybe", " positive", " negative").
prompt_type `src` (the recipes'): `prev = <s> prompt </s>`, and the one target is the answer at the last
position (no `</s>`: `make_sample(..., append_eos=False)`); `prev_output` drops the `</s>`, `none` keeps only
`<s>`. With `use_constraint` the training logits of that position are restricted to the answer words.
Prediction: the argmax over the answer words of the logits at the last decoder position, as OFA's
`valid_step`. Metrics: `acc` (all), `mcc` (CoLA, its `monitor`), `f1` (MRPC, QQP; positive = "yes").
MNLI: convert dev_matched as `val` and dev_mismatched as `test` (GLUE's test labels are hidden), so
`val/mnli/acc` is MNLI-m and `test/mnli/acc` MNLI-mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ofa.errors import RunConfigError
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.candidates import build_decoder_prompt
from ofa.tasks.metrics_text import BinaryLabelMetrics
from ofa.tasks.metrics_understanding import ExactMatchAccuracy

# name -> (prompt over text (, text_b), answer words in OFA's ans2label order)
PROMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cola": (' is the text " {text} " grammatically correct?', ("no", "yes")),
    "sst2": (' is the sentiment of text " {text} " positive or negative?', ("negative", "positive")),
    "mnli": (' can text1 " {text} " imply text2 " {text_b} "?', ("maybe", "yes", "no")),
    "rte": (' can text1 " {text} " imply text2 " {text_b} "?', ("no", "yes")),
    "qnli": (' does " {text_b} " contain the answer to question " {text} "?', ("no", "yes")),  # text = question
    "mrpc": (' does text1 " {text} " and text2 " {text_b} " have the same semantics?', ("no", "yes")),
    "qqp": (' is question " {text} " and question " {text_b} " equivalent?', ("no", "yes")),
}
# the datasets' own labels -> answer words (answer words map to themselves); OFA's TSVs carry the first kind
LABELS: dict[str, dict[str, str]] = {
    "cola": {"0": "no", "1": "yes"},
    "sst2": {"0": "negative", "1": "positive"},
    "mnli": {"0": "maybe", "1": "yes", "2": "no", "neutral": "maybe", "entailment": "yes", "contradiction": "no"},
    "rte": {"not_entailment": "no", "entailment": "yes", "0": "yes", "1": "no"},
    "qnli": {"0": "no", "1": "yes", "not_entailment": "no", "entailment": "yes"},
    "mrpc": {"0": "no", "1": "yes"},
    "qqp": {"0": "no", "1": "yes"},
}
METRICS = {"cola": ("acc", "mcc"), "mrpc": ("acc", "f1"), "qqp": ("acc", "f1")}


@dataclass
class GlueConfig(TaskConfig):
    """One GLUE task; `max_src_length` counts words per sentence (OFA: 512)."""

    max_src_length: int = 512
    max_tgt_length: int = 1
    label_smoothing: float = 0.0
    prompt_type: str = "src"
    use_constraint: bool = True
    labels: dict[str, str] = field(default_factory=dict)  # extra raw label -> answer word mappings


class GlueTask(Task):
    """A GLUE task (module docstring); subclasses set `name` (a key of `PROMPTS`) and `monitor`."""

    monitor = "acc"
    config_class = GlueConfig

    def __init__(self, tokenizer: Any, cfg: GlueConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.prompt, self.answers = PROMPTS[self.name]
        self.label_map = {**LABELS[self.name], **{a: a for a in self.answers}, **dict(cfg.labels)}
        self.pair = "{text_b}" in self.prompt
        ids = {a: tokenizer.encode(" " + a) for a in self.answers}
        bad = [f"{a!r} -> {len(t)} tokens" for a, t in ids.items() if len(t) != 1]
        if bad:
            raise RunConfigError(f"task {self.name}: every answer word must be one token of the vocabulary "
                                 f"(OFA asserts it), got {', '.join(bad)}; use a tokenizer that has them")
        self.answer_ids = torch.tensor([t[0] for t in ids.values()])  # (C,)

    # ---- data side -------------------------------------------------------------------------
    def sentence(self, text: str) -> str:
        return " ".join(text.lower().strip().split()[: self.cfg.max_src_length])

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """`text` (+ `text_b`) and `label` (a dataset label or an answer word) -> Sample; None if absent."""
        text, text_b = raw.get("text"), raw.get("text_b")
        label = self.label_map.get(str(raw.get("label", "")).strip())
        if not isinstance(text, str) or label is None or (self.pair and not isinstance(text_b, str)):
            return None
        sentences = {"text": self.sentence(text), "text_b": self.sentence(text_b or "")}
        prompt = self.prompt.format(**sentences)
        source = self.encode_text(prompt, bos=True, eos=True)  # (S,)
        decoder_prompt = build_decoder_prompt(source, self.cfg.prompt_type, self.tokenizer.bos)  # (P,)
        answer = self.answer_ids[self.answers.index(label)].view(1)  # (1,)
        mask = None
        if self.cfg.use_constraint:  # (P, V): only the last position (the answer's) allows the answer words
            mask = torch.zeros(decoder_prompt.numel(), len(self.tokenizer), dtype=torch.bool)
            mask[-1, self.answer_ids] = True
        return self.make_sample(raw, source, answer, None, decoder_prompt=decoder_prompt, constraint_mask=mask,
                                meta={"answer": label, **sentences}, append_eos=False)

    # ---- evaluation side -------------------------------------------------------------------
    def build_metrics(self) -> dict[str, Any]:
        keys = METRICS.get(self.name, ("acc",))
        if len(self.answers) != 2:
            return {"acc": ExactMatchAccuracy()}
        positive = "positive" if "positive" in self.answers else "yes"
        return {"glue": BinaryLabelMetrics(positive=positive, keys=keys)}

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, batch: dict[str, Any]) -> list[str]:
        """Argmax over the answer words of the logits at each row's last decoder position."""
        prev = batch["prev_output_tokens"]  # (B, T)
        encoder_out = model.encode(batch["src_tokens"], patch_images=batch.get("patch_images"),
                                   patch_masks=batch.get("patch_masks"))
        logits = model.decode(prev, encoder_out)  # (B, T, V)
        last = prev.ne(self.tokenizer.pad).sum(1) - 1  # (B,)
        scores = logits[torch.arange(prev.size(0)), last][:, self.answer_ids.to(prev.device)]  # (B, C)
        return [self.answers[i] for i in scores.argmax(1).tolist()]

    def evaluate(self, model: torch.nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        preds = self.predict(model, batch)
        for metric in metrics.values():
            metric.update(preds, [m["answer"] for m in batch["meta"]])
        return [{"id": i, "text": m["text"], "text_b": m["text_b"], "prediction": p, "label": m["answer"],
                 "references": [m["answer"]]} for i, p, m in zip(batch["id"], preds, batch["meta"])]


def _glue_class(task: str, monitor: str) -> type[GlueTask]:
    """One registered class per GLUE task (its own `name`, schema and monitor)."""
    config = type(f"{task.upper()}Config", (GlueConfig,), {"__doc__": f"{task} settings (GlueConfig)."})
    config = dataclass(config)
    return type(f"{task.upper()}Task", (GlueTask,), {"name": task, "monitor": monitor, "config_class": config,
                                                      "__doc__": f"GLUE {task} (ofa.tasks.glue)."})


GLUE_TASKS: dict[str, type[GlueTask]] = {t: _glue_class(t, "mcc" if t == "cola" else "acc") for t in PROMPTS}
