"""`OFADataModule`: WebDataset shards of one task or a weighted multitask mixture -> OFA batches.

Training mixes tasks per sample with the given weights and runs `batches_per_epoch` batches per rank;
validation and test give one dataloader per task (in mixture order), so metrics stay per task.
Skipped data is counted by reason: `skip_counts()` -> `{"bad_image": 3, ...}` (log as `data/skipped/<reason>`).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist

from ofa.datamodules.pipeline import EvalStream, ShardLoader, Source, StreamConfig, TrainStream
from ofa.datamodules.shards import REASONS, Shards, SkipCounter, expand_shards

SPLITS = ("train", "val", "test")
# TrainStream.__len__ is exact (each worker yields its share of batches_per_epoch), so Lightning's generic
# warning about the length of multi-worker IterableDatasets does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


@dataclass
class TaskData:
    """One task with its shard patterns per split and its weight in the training mixture."""

    task: Any  # has `.name` and `.preprocess(raw, split) -> dict | None`
    train_shards: Shards | None = None
    val_shards: Shards | None = None
    test_shards: Shards | None = None
    weight: float = 1.0

    def shards(self, split: str) -> Shards | None:
        return getattr(self, f"{split}_shards")


def as_task_data(item: Any, tasks: Mapping[str, Any] | None = None) -> TaskData:
    """Accept `TaskData`, a mapping with its fields (Hydra), or a tuple `(task, shards, weight)` where
    `shards` is the train pattern(s) or a mapping `{"train": ..., "val": ..., "test": ...}`.
    A task given by name is looked up in `tasks`."""
    if isinstance(item, Mapping):
        unknown = set(item) - {f.name for f in fields(TaskData)}
        if unknown:
            raise ValueError(f"mixture entry has unknown keys {sorted(unknown)}; "
                             f"expected {[f.name for f in fields(TaskData)]}")
        item = TaskData(**item)
    elif isinstance(item, Sequence) and len(item) == 3:
        task, shards, weight = item
        split_shards = shards if isinstance(shards, Mapping) else {"train": shards}
        item = TaskData(task, *(split_shards.get(s) for s in SPLITS), weight=float(weight))
    elif not isinstance(item, TaskData):
        raise ValueError(f"mixture entry {item!r} is not a TaskData, a mapping or a (task, shards, weight) tuple")
    if isinstance(item.task, str):
        if item.task not in (tasks or {}):
            raise ValueError(f"unknown task {item.task!r}; built tasks: {sorted(tasks or {})}")
        item = dataclasses.replace(item, task=tasks[item.task])
    return item


class OFADataModule(pl.LightningDataModule):
    """Streams WebDataset shards through `task.preprocess` and `collate` (see module docstring).

    Give either `task` with `train_shards`/`val_shards`/`test_shards`, or `mixture` (a list of `TaskData`,
    mappings, or `(task, shards, weight)` tuples). A task may be given by name when `tasks` (name -> task
    object, e.g. built by a factory) is passed; with one task in `tasks` and no `task`/`mixture`, it is used.
    `batch_size` is per device; `rank`/`world_size` default to the trainer's (pass them to simulate ranks).
    `max_image_pixels` guards against decompression bombs.
    """

    def __init__(self, task: Any = None, train_shards: Shards | None = None, val_shards: Shards | None = None,
                 test_shards: Shards | None = None, mixture: Sequence[Any] | None = None, batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 2, batches_per_epoch: int = 1000,
                 seed: int = 0, max_image_pixels: int = 50_000_000, shuffle_buffer: int = 1000,
                 pad_id: int | None = None, rank: int | None = None, world_size: int | None = None,
                 pin_memory: bool = False, persistent_workers: bool = False,
                 tasks: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if task is None and mixture is None and tasks is not None and len(tasks) == 1:
            task = next(iter(tasks.values()))
        if (task is None) == (mixture is None):
            raise ValueError("OFADataModule: give either `task` (with *_shards) or `mixture`, not both or neither")
        items = [TaskData(task, train_shards, val_shards, test_shards)] if task is not None else mixture
        self.task_data = [as_task_data(item, tasks) for item in items]
        if not self.task_data:
            raise ValueError("OFADataModule: empty mixture")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or num_workers < 0:
            raise ValueError(f"OFADataModule: need batch sizes >= 1 and num_workers >= 0, got batch_size="
                             f"{batch_size}, eval_batch_size={eval_batch_size}, num_workers={num_workers}")
        self._urls = {(i, split): expand_shards(td.shards(split)) for i, td in enumerate(self.task_data)
                      for split in SPLITS if td.shards(split)}  # validates patterns now
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.batches_per_epoch, self.seed = num_workers, batches_per_epoch, seed
        self.max_image_pixels, self.shuffle_buffer = max_image_pixels, shuffle_buffer
        self.pad_id = pad_id if pad_id is not None else _pad_of(self.task_data[0].task)
        self.rank, self.world_size = rank, world_size
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self._counters: dict[str, list[SkipCounter]] = {split: [] for split in SPLITS}
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    @property
    def tasks(self) -> list[Any]:
        return [td.task for td in self.task_data]

    def eval_task_names(self, split: str) -> list[str]:
        """Task names of the dataloaders returned for `split` ("val" or "test"), in order."""
        return [td.task.name for i, td in enumerate(self.task_data) if (i, split) in self._urls]

    # ---- dataloaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> ShardLoader:
        sources = [Source(td.task, self._urls[(i, "train")], td.weight)
                   for i, td in enumerate(self.task_data) if (i, "train") in self._urls]
        if not sources:
            raise ValueError("OFADataModule: no train_shards given for any task")
        stream = TrainStream(sources, self.batches_per_epoch, self._stream_config(self.batch_size),
                             self._new_counter("train"))
        stream.resume_at = self._resume_at
        return self._loader(stream, self._train_epoch)

    # ---- position in the training stream (saved in checkpoints) -------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The epoch and the number of its batches trained on so far (the stream is a function of these)."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_position": {"epoch": self.trainer.current_epoch, "batches": done}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        self._resume_at, self._resume_pending = None, bool(position)
        if position:  # a finished epoch resumes at the start of the next one
            epoch, done = position["epoch"], position["batches"]
            self._resume_at = (epoch + 1, 0) if done >= self.batches_per_epoch else (epoch, done)

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

    def _eval_loaders(self, split: str) -> list[ShardLoader]:
        loaders = []
        for i, td in enumerate(self.task_data):
            if (i, split) in self._urls:
                source = Source(td.task, self._urls[(i, split)])
                stream = EvalStream(source, split, self._stream_config(self.eval_batch_size), self._new_counter(split))
                loaders.append(self._loader(stream))
        return loaders

    def _loader(self, stream: TrainStream | EvalStream, epoch_fn: Any = None) -> ShardLoader:
        workers = self.num_workers
        return ShardLoader(stream, epoch_fn=epoch_fn or self._trainer_epoch, num_workers=workers, pin_memory=self.pin_memory,
                           persistent_workers=self.persistent_workers and workers > 0)

    def _stream_config(self, batch_size: int) -> StreamConfig:
        rank, world_size = self._rank_world()
        return StreamConfig(batch_size=batch_size, pad_id=self.pad_id, seed=self.seed, rank=rank,
                            world_size=world_size, max_image_pixels=self.max_image_pixels,
                            shuffle_buffer=self.shuffle_buffer)

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None or self.world_size is not None:
            rank, world = self.rank or 0, self.world_size or 1
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
        counter = SkipCounter(self.num_workers)
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
