"""`OFADataModule`: WebDataset shards of one or more task sources -> OFA batches.

A run reads a list of `TaskSource`s (a single task is a mixture of one) with one `LoaderConfig`.
Training mixes the sources per sample with their weights and runs `batches_per_epoch` batches per rank;
validation and test give one dataloader per source that has shards for the split (in source order), so
metrics stay per task. Skipped data is counted by reason: `skip_counts()` -> `{"bad_image": 3, ...}`
(log as `data/skipped/<reason>`).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist

from ofa.datamodules.pipeline import EvalStream, ShardLoader, Source, StreamConfig, TrainStream
from ofa.datamodules.shards import REASONS, Shards, SkipCounter, expand_shards
from ofa.errors import check_values

SPLITS = ("train", "val", "test")
# TrainStream.__len__ is exact (each worker yields its share of batches_per_epoch), so Lightning's generic
# warning about the length of multi-worker IterableDatasets does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


@dataclass
class TaskSource:
    """One task with its shard patterns per split and its weight in the training mixture.
    A split without shards has no loader (e.g. VQA's test-dev, whose answers are not public)."""

    task: Any  # has `.name` and `.preprocess(raw, split) -> dict | None`
    train_shards: Shards | None = None
    val_shards: Shards | None = None
    test_shards: Shards | None = None
    weight: float = 1.0
    start_epoch: int = 0  # the task joins the training mixture at this epoch (earlier epochs: the other tasks)
    every: int = 0  # > 0: not drawn by weight, but `count` rows after every `every`-th drawn row (OFA's
    count: int = 1  # pretraining extras: every 8th row); its samples form the batch's second mini-batch

    def __post_init__(self) -> None:
        name = getattr(self.task, "name", "?")
        check_values([(f"data.sources.{name}.weight", self.weight, self.weight > 0, "must be > 0"),
                      (f"data.sources.{name}.start_epoch", self.start_epoch, self.start_epoch >= 0, "must be >= 0"),
                      (f"data.sources.{name}.every", self.every, self.every >= 0, "must be >= 0"),
                      (f"data.sources.{name}.count", self.count, self.count >= 1, "must be >= 1")])

    def shards(self, split: str) -> Shards | None:
        return getattr(self, f"{split}_shards")


@dataclass
class LoaderConfig:
    """How the sources become batches; the data config's keys of the same names (`data.batch_size`, ...).

    `batch_size` is per device (`eval_batch_size` defaults to it); `rank`/`world_size` default to the
    trainer's (set them to simulate ranks); `max_image_pixels` guards against decompression bombs;
    `pad_id` defaults to the first task's tokenizer's."""

    batch_size: int = 8
    eval_batch_size: int | None = None
    num_workers: int = 2
    batches_per_epoch: int = 1000
    seed: int = 0
    shuffle_buffer: int = 1000
    max_image_pixels: int = 50_000_000
    pad_id: int | None = None
    rank: int | None = None
    world_size: int | None = None
    pin_memory: bool = False
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        """Refuse unusable loader values at start, on one line naming the config key (`RunConfigError`, a
        ValueError): `config error: data.batch_size=-4: need batch sizes >= 1`."""
        eval_ok = self.eval_batch_size is None or self.eval_batch_size >= 1
        check_values([("data.batch_size", self.batch_size, self.batch_size >= 1, "need batch sizes >= 1"),
                      ("data.eval_batch_size", self.eval_batch_size, eval_ok, "need batch sizes >= 1"),
                      ("data.num_workers", self.num_workers, self.num_workers >= 0, "need num_workers >= 0"),
                      ("data.batches_per_epoch", self.batches_per_epoch, self.batches_per_epoch >= 1,
                       "need batches_per_epoch >= 1"),
                      ("data.shuffle_buffer", self.shuffle_buffer, self.shuffle_buffer >= 0, "must be >= 0")])


def build_sources(entries: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Any],
                  defaults: Mapping[str, Any] | None = None) -> list[TaskSource]:
    """`TaskSource`s from config entries `{task name: {weight, train_shards, val_shards, test_shards}}`, in
    entry order. A key an entry leaves out takes its value from `defaults` (the data config's shared
    shard patterns), so adding a task that reads the shared shards is one line; `tasks` maps names to
    built task objects."""
    known = [f.name for f in fields(TaskSource) if f.name != "task"]
    sources = []
    for name, entry in entries.items():
        unknown = set(entry or {}) - set(known)
        if unknown:
            raise ValueError(f"data source {name!r} has unknown keys {sorted(unknown)}; expected {known}")
        if name not in tasks:
            raise ValueError(f"unknown task {name!r} in the data sources; built tasks: {sorted(tasks)}")
        values = {**{k: v for k, v in (defaults or {}).items() if k in known}, **(entry or {})}
        sources.append(TaskSource(tasks[name], **values))
    return sources


class OFADataModule(pl.LightningDataModule):
    """Streams the sources' shards through `task.preprocess` and `collate` (see module docstring)."""

    def __init__(self, sources: Sequence[TaskSource], loader: LoaderConfig | None = None) -> None:
        super().__init__()
        self.sources = list(sources)
        if not self.sources or not all(isinstance(s, TaskSource) for s in self.sources):
            raise ValueError(f"OFADataModule: give a non-empty list of TaskSource, got {sources!r}")
        self.loader = loader or LoaderConfig()
        self._urls = {(i, split): expand_shards(source.shards(split)) for i, source in enumerate(self.sources)
                      for split in SPLITS if source.shards(split)}  # validates patterns now
        self.eval_batch_size = self.loader.eval_batch_size or self.loader.batch_size
        self.pad_id = self.loader.pad_id if self.loader.pad_id is not None else _pad_of(self.sources[0].task)
        self._counters: dict[str, list[SkipCounter]] = {split: [] for split in SPLITS}
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    @property
    def tasks(self) -> list[Any]:
        return [source.task for source in self.sources]

    def eval_task_names(self, split: str) -> list[str]:
        """Task names of the dataloaders returned for `split` ("val" or "test"), in order."""
        return [s.task.name for i, s in enumerate(self.sources) if (i, split) in self._urls]

    # ---- dataloaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> ShardLoader:
        sources = [Source(s.task, self._urls[(i, "train")], s.weight, s.start_epoch, s.every, s.count)
                   for i, s in enumerate(self.sources) if (i, "train") in self._urls]
        if not sources:
            raise ValueError("OFADataModule: no train_shards given for any task")
        stream = TrainStream(sources, self.loader.batches_per_epoch, self._stream_config(self.loader.batch_size),
                             self._new_counter("train"))
        stream.resume_at = self._resume_at
        return self._loader(stream, self._train_epoch)

    # ---- position in the training stream (saved in checkpoints) -------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The epoch and the number of its batches trained on so far (the stream is a function of these).

        Between epochs (the fit loop has counted epoch e completed and not yet started e + 1: a checkpoint saved
        after the epoch-end bookkeeping, e.g. a SIGTERM seen only then), `current_epoch` is already e + 1 while
        the batch counter still holds epoch e's count: the position is then the start of e + 1."""
        if self.trainer is None:
            return {}
        epochs = self.trainer.fit_loop.epoch_progress.current
        in_epoch = epochs.started > epochs.completed
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if in_epoch else 0
        return {"train_position": {"epoch": self.trainer.current_epoch, "batches": done}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        self._resume_at, self._resume_pending = None, bool(position)
        if position:  # a finished epoch resumes at the start of the next one
            epoch, done = position["epoch"], position["batches"]
            self._resume_at = (epoch + 1, 0) if done >= self.loader.batches_per_epoch else (epoch, done)

    def _train_epoch(self) -> int | None:
        """The trainer's epoch; for the first pass after a restore, the checkpoint's (Lightning creates that
        iterator in `setup_data`, before it restores its epoch counter)."""
        if getattr(self, "_resume_pending", False):
            self._resume_pending = False
            return self._resume_at[0]
        return self._trainer_epoch()

    def val_dataloader(self) -> list[ShardLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[ShardLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[ShardLoader]:
        """`Trainer.predict(module, datamodule=dm)`: the test split's loaders (one per task), else val's."""
        return self._eval_loaders("test") or self._eval_loaders("val")

    def _eval_loaders(self, split: str) -> list[ShardLoader]:
        loaders = []
        for i, source in enumerate(self.sources):
            if (i, split) in self._urls:
                stream = EvalStream(Source(source.task, self._urls[(i, split)]), split,
                                    self._stream_config(self.eval_batch_size), self._new_counter(split))
                loaders.append(self._loader(stream))
        return loaders

    def _loader(self, stream: TrainStream | EvalStream, epoch_fn: Any = None) -> ShardLoader:
        workers = self.loader.num_workers
        return ShardLoader(stream, epoch_fn=epoch_fn or self._trainer_epoch, num_workers=workers,
                           pin_memory=self.loader.pin_memory,
                           persistent_workers=self.loader.persistent_workers and workers > 0)

    def _stream_config(self, batch_size: int) -> StreamConfig:
        rank, world_size = self._rank_world()
        return StreamConfig(batch_size=batch_size, pad_id=self.pad_id, seed=self.loader.seed, rank=rank,
                            world_size=world_size, max_image_pixels=self.loader.max_image_pixels,
                            shuffle_buffer=self.loader.shuffle_buffer)

    def _rank_world(self) -> tuple[int, int]:
        if self.loader.rank is not None or self.loader.world_size is not None:
            rank, world = self.loader.rank or 0, self.loader.world_size or 1
        elif self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        elif dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ValueError(f"OFADataModule: rank {rank} outside world_size {world}")
        return rank, world

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    # ---- skip counts -------------------------------------------------------------------------------
    def _new_counter(self, split: str) -> SkipCounter:
        counter = SkipCounter(self.loader.num_workers)
        self._counters[split].append(counter)
        return counter

    def skip_counts(self, split: str | None = None) -> dict[str, int]:
        """reason -> skipped shards/samples on this rank since the loaders were built (all splits if None)."""
        totals = dict.fromkeys(REASONS, 0)
        for s in [split] if split else SPLITS:
            for counter in self._counters[s]:
                for reason, n in counter.counts().items():
                    totals[reason] += n
        return totals


def _pad_of(task: Any) -> int:
    tokenizer = getattr(task, "tokenizer", None)
    return tokenizer.pad if tokenizer is not None else 1
