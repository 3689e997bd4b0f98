"""The task interface: raw sample -> model sample (prompt, target, constraints) and evaluation.

A task owns no training loop. The loss is shared (`ofa.tasks.losses`); a task turns a raw shard sample
into tensors (`preprocess`), and evaluates a batch (`evaluate`) by decoding or candidate scoring,
updating its torchmetrics.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ofa.tokenizer import OFATokenizer


@dataclass
class TaskConfig:
    """Settings shared by every task; task configs subclass this."""

    image_size: int = 256
    max_src_length: int = 80  # words (pre_caption / pre_question semantics)
    max_tgt_length: int = 20
    label_smoothing: float = 0.1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


class Task:
    """Base class. Subclasses set `name` and `monitor` and implement `preprocess` and `evaluate`."""

    name: str = "task"
    monitor: str = "loss"  # metric used to keep the best checkpoint (higher is better unless "loss")
    needs_image: bool = True

    def __init__(self, tokenizer: OFATokenizer, cfg: TaskConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg

    # ---- data side -------------------------------------------------------------------------
    def preprocess(self, raw: dict[str, Any], split: str) -> dict[str, Any] | None:
        """Raw shard sample (json fields + "image") -> model sample; None if the sample lacks fields."""
        raise NotImplementedError

    def pick(self, items: list, split: str, rng: random.Random | None = None) -> Any:
        """Training picks one annotation at random; evaluation is deterministic (the first)."""
        if split == "train":
            return (rng or random).choice(items)
        return items[0]

    def encode_text(self, text: str, bos: bool = False, eos: bool = False) -> Tensor:
        ids = self.tokenizer.encode(text)
        if bos:
            ids = [self.tokenizer.bos] + ids
        if eos:
            ids = ids + [self.tokenizer.eos]
        return torch.tensor(ids, dtype=torch.long)

    # ---- evaluation side -------------------------------------------------------------------
    def build_metrics(self) -> dict[str, Any]:
        """name -> torchmetrics.Metric; logged as `<split>/<task>/<name>`."""
        return {}

    def evaluate(self, model: torch.nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        """Decode/score a batch, update `metrics`, return per-sample predictions for logging."""
        raise NotImplementedError
