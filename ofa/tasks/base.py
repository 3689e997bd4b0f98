"""The task contract: raw shard sample -> `Sample` (prompt, target, image, constraints) and evaluation.

A task owns no training loop. The loss is shared (`ofa.tasks.losses`); a task turns a raw shard sample
into one `Sample` (`preprocess`, which builds it with `make_sample` — the one place samples are made),
checks that it can run with a model and tokenizer (`check`), and evaluates a batch (`evaluate`) by
decoding or candidate scoring, updating its torchmetrics.

Sequence layout (spec §3.1), for every task: `source = <s> prompt </s>`; with a decoder prompt `P`
(`[<s>]` unless the task forces more, e.g. VQA's question), `prev_output_tokens = P + tgt` and
`target = [pad] * (len(P) - 1) + tgt + </s>` (positions over the prompt are ignored by the loss).
Text-only samples (`image=None`) get a zero image with `patch_mask=False`, as OFA does (spec §3.11).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ofa.errors import RunConfigError
from ofa.modules.generation import SequenceGenerator
from ofa.tasks.transforms import TransformFn, build_transform
from ofa.tokenizer import OFATokenizer


@dataclass
class TaskConfig:
    """Settings shared by every task; task configs subclass this."""

    image_size: int = 256
    max_src_length: int = 80  # words (pre_caption / pre_question semantics)
    max_tgt_length: int = 20
    label_smoothing: float = 0.1
    loss_weight: float = 1.0  # multiplies this task's token losses in the training loss (1 = OFA; mixtures)
    bin_sigma: float = 0.0  # > 0: each <bin_i> target is a Gaussian of this std (in bins) over the bins (0 = OFA)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: str = "none"  # training augmentation (ofa.tasks.transforms); OFA: none, "randaug" for ImageNet


@dataclass
class Sample:
    """One model sample, the same fields and types for every task (collated by `ofa.datamodules.collate`)."""

    id: str
    task: str
    source: Tensor  # (S,) long: <s> prompt </s>
    prev_output_tokens: Tensor  # (T,) long: decoder_prompt + target tokens
    target: Tensor  # (T,) long: pad over the prompt, then target tokens + </s>
    decoder_prompt: Tensor  # (P,) long: [<s>] + forced prefix; forced at inference
    patch_image: Tensor  # (3, S, S) float; zeros for text-only samples
    patch_mask: bool  # False: text-only (the image's patches are masked out)
    conf: float = 1.0  # loss weight of the sample
    constraint_mask: Tensor | None = None  # (T, V) bool, True = allowed target token
    code_mask: bool = False  # the target is image codes
    meta: dict[str, Any] = field(default_factory=dict)  # what evaluation needs (references, boxes, ...)
    sample_patch_num: int | None = None  # training: keep this many random image patches (OFA's pretraining)


def build_prompted_target(decoder_prompt: Tensor, answer: Tensor, eos: int, pad: int,
                          append_eos: bool = True) -> tuple[Tensor, Tensor]:
    """`prev = decoder_prompt + answer`, `target = [pad]*(P-1) + answer + [</s>]` (P = len(decoder_prompt)).

    `append_eos=False` (OFA's GLUE layout: the answer is the last target, no `</s>`): `prev = decoder_prompt +
    answer[:-1]`, `target = [pad]*(P-1) + answer`.
    """
    if append_eos:
        prev = torch.cat([decoder_prompt, answer])  # (P + A,)
        target = torch.cat([decoder_prompt[1:], answer, answer.new_tensor([eos])])  # (P + A,)
    else:
        prev = torch.cat([decoder_prompt, answer[:-1]])  # (P + A - 1,)
        target = torch.cat([decoder_prompt[1:], answer])  # (P + A - 1,)
    target[: decoder_prompt.numel() - 1] = pad
    return prev, target


class Task:
    """Base class. Subclasses set `name`, `monitor`, `config_class` and implement `preprocess`, `evaluate`."""

    name: str = "task"
    monitor: str = "loss"  # metric used to keep the best checkpoint (higher is better unless "loss")
    config_class: type[TaskConfig] = TaskConfig

    def __init__(self, tokenizer: OFATokenizer, cfg: TaskConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._transforms: dict[bool, TransformFn] = {}
        self._generator: SequenceGenerator | None = None

    # ---- data side -------------------------------------------------------------------------
    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | list[Sample] | None:
        """Raw shard sample (json fields + "image") -> `Sample` (or several, e.g. pretraining's main and
        second example of a row); None if the sample lacks the task's fields."""
        raise NotImplementedError

    def transform(self, split: str) -> TransformFn:
        """The image (+ boxes) transform of `split`: `cfg.augment` when training, a square resize otherwise."""
        train = split == "train"
        if train not in self._transforms:
            augment = self.cfg.augment if train else "none"
            self._transforms[train] = build_transform(self.cfg.image_size, self.cfg.mean, self.cfg.std,
                                                      train=train, augment=augment)
        return self._transforms[train]

    def pick(self, items: list, split: str) -> Any:
        """Training picks one annotation at random (the stream's private RNG); evaluation takes the first."""
        return random.choice(items) if split == "train" else items[0]

    def encode_text(self, text: str, bos: bool = False, eos: bool = False) -> Tensor:
        ids = self.tokenizer.encode(text)
        if bos:
            ids = [self.tokenizer.bos] + ids
        if eos:
            ids = ids + [self.tokenizer.eos]
        return torch.tensor(ids, dtype=torch.long)

    def make_sample(self, raw: dict[str, Any], source: Tensor, target: Tensor, image: Tensor | None, *,
                    decoder_prompt: Tensor | None = None, conf: float = 1.0,
                    constraint_mask: Tensor | None = None, code_mask: bool = False,
                    meta: dict[str, Any] | None = None, sample_id: str | None = None,
                    append_eos: bool = True) -> Sample:
        """The one place a `Sample` is made: `source` (S,) with specials, `target` (A,) target tokens without
        `</s>`, `image` (3, S, S) transformed pixels or None (text-only), `decoder_prompt` (P,) starting with
        `<s>` (default `[<s>]`); `append_eos=False`: no `</s>` target (`build_prompted_target`)."""
        tok = self.tokenizer
        prompt = decoder_prompt if decoder_prompt is not None else torch.tensor([tok.bos])
        prev, tgt = build_prompted_target(prompt, target.long(), tok.eos, tok.pad, append_eos)  # (T,), (T,)
        has_image = image is not None
        if not has_image:
            image = torch.zeros(3, self.cfg.image_size, self.cfg.image_size)
        return Sample(
            id=str(sample_id if sample_id is not None else raw.get("id", raw.get("__key__", ""))),
            task=self.name, source=source, prev_output_tokens=prev, target=tgt, decoder_prompt=prompt,
            patch_image=image, patch_mask=has_image,
            conf=float(conf), constraint_mask=constraint_mask, code_mask=bool(code_mask), meta=dict(meta or {}))

    # ---- start-up checks ---------------------------------------------------------------------
    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        """Raise `RunConfigError` (one line naming the key) if this task cannot run with this model and
        tokenizer: the image's patch grid beyond the model's position grid, lengths beyond its positions."""
        if not self.cfg.loss_weight > 0:
            raise RunConfigError(f"{prefix}.loss_weight={self.cfg.loss_weight}: must be > 0")
        if not self.cfg.bin_sigma >= 0:
            raise RunConfigError(f"{prefix}.bin_sigma={self.cfg.bin_sigma}: must be >= 0")
        size, grid, stride = self.cfg.image_size, model_cfg.image_bucket_size, model_cfg.patch_stride
        if size and math.ceil(size / stride) > grid:
            side = math.ceil(size / stride)
            raise RunConfigError(f"{prefix}.image_size={size} gives a {side}x{side} patch grid but "
                                 f"model.image_bucket_size={grid} allows at most {grid * stride} pixels")
        for task_key, model_key in (("max_tgt_length", "max_target_positions"),
                                    ("max_src_length", "max_source_positions")):
            length, limit = getattr(self.cfg, task_key, None), getattr(model_cfg, model_key, None)
            if length and limit and length + 2 > limit:  # + <s> / </s>
                raise RunConfigError(f"{prefix}.{task_key}={length} (+2 special tokens) exceeds "
                                     f"model.{model_key}={limit}")
        generation = getattr(self.cfg, "generation", None)
        max_len, limit = getattr(generation, "max_len_b", None), getattr(model_cfg, "max_target_positions", None)
        if max_len and limit and max_len + 1 > limit:
            raise RunConfigError(f"{prefix}.generation.max_len_b={max_len} exceeds "
                                 f"model.max_target_positions={limit}")

    def prepare_training(self, train_shards: list[str]) -> None:
        """Called once by the wiring with the training shard URLs before training, for what a task derives
        from its training data (e.g. SCST's CIDEr-D document frequencies). Default: nothing."""

    def training_criterion(self) -> Any:
        """A callable `(model, batch) -> (LossOutput, rewards)` that replaces the label-smoothed CE for this
        task's training batches (SCST, `ofa.tasks.scst`), or None (the default: cross-entropy)."""
        return None

    def bin_range(self) -> tuple[int, int]:
        """Ids `[start, end)` of the `<bin_i>` location tokens (the loss's `bin_sigma` spreads targets there)."""
        return self.tokenizer.bin_offset, self.tokenizer.bin_offset + self.tokenizer.num_bins

    def constraint_range(self) -> tuple[int, int] | None:
        """Vocabulary range `[start, end)` the targets are restricted to, besides the 4 specials (OFA's
        `--constraint-range`, e.g. the `<code_i>` tokens of image generation): applied to the logits in the
        loss and in decoding. None = the whole vocabulary."""
        return None

    # ---- evaluation side -------------------------------------------------------------------
    def build_metrics(self) -> dict[str, Any]:
        """name -> torchmetrics.Metric; logged as `<split>/<task>/<name>`."""
        return {}

    def generator(self, model: torch.nn.Module) -> SequenceGenerator:
        """The task's decoder (`cfg.generation`), one per model object (rebuilt when the model changes)."""
        if self._generator is None or self._generator.model is not model:
            tok = self.tokenizer
            self._generator = SequenceGenerator(model, self.cfg.generation, pad=tok.pad, bos=tok.bos, eos=tok.eos)
        return self._generator

    def end_evaluation(self, split: str, step: int) -> Any:
        """Called once after each evaluation of `split`; a task that writes a picture (e.g. a grid of
        generated images) returns its path, which is logged to W&B. Default: nothing."""
        return None

    def evaluate(self, model: torch.nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        """Decode/score a batch, update `metrics`, return per-sample predictions for logging."""
        raise NotImplementedError
