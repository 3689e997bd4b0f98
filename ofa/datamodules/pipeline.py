"""Shards -> decoded samples -> `task.preprocess` -> collated batches, split over DDP ranks and workers.

- `TrainStream`: endless resampled shards (seeded by seed, epoch, rank, worker), a shuffle buffer of raw
  samples, a per-row task mixture, and exactly `batches_per_epoch` batches per rank, spread over the
  workers, so every rank runs the same number of steps (no DDP hang at the epoch end). A row may give
  several samples (pretraining's main + second example). Sources with `every > 0` are not drawn by weight:
  they give `count` samples after every `every`-th row of the weighted ones (OFA's pretraining extras, every
  8th row), and then every batch is two mini-batches (`collate_mini_batches`: samples of weighted sources,
  of scheduled ones).
- `EvalStream`: one finite pass in which every sample is read by exactly one (rank, worker): whole shards
  when there are at least as many shards as readers, else every reader keeps every n-th sample.

Rank and world size are passed in explicitly (webdataset's `split_by_node` guesses from the environment,
which Lightning's spawned processes do not set). Batches are built in the workers: use `ShardLoader`.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ofa.datamodules.collate import collate, collate_mini_batches
from ofa.datamodules.shards import SkipCounter, SkipSample, decode_sample, read_shard

MAX_CONSECUTIVE_SKIPS = 1000  # a training source that yields nothing for this long is misconfigured


class DataError(RuntimeError):
    """A training source without usable data; the message names the task and the last skipped sample
    with its cause. Raised in a DataLoader worker, re-raised by the loader in the trainer's process
    (train.py prints it on one line, exit 3)."""


@dataclass
class Source:
    """One task's shards for one split, with its mixture weight (training only)."""

    task: Any  # a `Task`: `.name` and `.preprocess(raw, split) -> Sample | None`
    urls: list[str]
    weight: float = 1.0
    start_epoch: int = 0  # sampled from this epoch on (weight 0 before)
    every: int = 0  # > 0: not drawn by weight; `count` samples after every `every`-th weighted row
    count: int = 1


@dataclass
class StreamConfig:
    """Settings shared by the train and eval streams."""

    batch_size: int
    pad_id: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    max_image_pixels: int = 50_000_000
    shuffle_buffer: int = 1000


def prepare(raw: dict[str, Any], task: Any, split: str, cfg: StreamConfig, counter: SkipCounter,
            rng: StreamRNG | None = None, last_skip: list[str] | None = None) -> list | None:
    """Decode and preprocess one raw sample (under `rng`'s private RNG states if given) into its list of
    samples; None (counted by reason, and described in `last_skip[0]` if given) if it cannot be used."""
    where = f"{task.name} sample {raw.get('__key__')} of {raw.get('__url__')}"
    try:
        item = decode_sample(raw, cfg.max_image_pixels)
    except SkipSample as skip:
        return _skip(counter, skip.reason, f"{where}: {skip.detail}", last_skip)
    try:
        with rng or contextlib.nullcontext():
            sample = task.preprocess(item, split)
    except Exception as exn:  # noqa: BLE001 - one bad sample must not end a run; counted and warned once
        return _skip(counter, "preprocess_error", f"{where}: {type(exn).__name__}: {exn}", last_skip)
    if sample is None or (isinstance(sample, list) and not sample):
        return _skip(counter, "missing_fields", where, last_skip)
    return sample if isinstance(sample, list) else [sample]


def _skip(counter: SkipCounter, reason: str, detail: str, last_skip: list[str] | None) -> None:
    """Count a skipped sample; remember its description for the error that ends a source without data."""
    counter.add(reason, detail)
    if last_skip is not None:
        last_skip[:] = [f"{reason}: {detail}"]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _seed_worker(tag: str) -> None:
    """Seed the global RNGs used by task augmentations, in worker processes only (never the trainer's)."""
    if get_worker_info() is None:
        return
    seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StreamRNG:
    """Private python/numpy/torch RNG states, swapped in around `task.preprocess` (`with rng: ...`): the
    augmentations of a training stream depend only on its tag (seed/epoch/rank/worker), never on the
    trainer's global RNGs, nor on the worker count or process they run in."""

    def __init__(self, tag: str) -> None:
        self.seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "little")
        self._own: tuple | None = None
        self._outer: tuple | None = None

    @staticmethod
    def _get() -> tuple:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    def __enter__(self) -> StreamRNG:
        self._outer = self._get()
        if self._own is None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.random.default_generator.manual_seed(self.seed)
        else:
            random.setstate(self._own[0])
            np.random.set_state(self._own[1])
            torch.set_rng_state(self._own[2])
        return self

    def __exit__(self, *exc: Any) -> None:
        self._own = self._get()
        random.setstate(self._outer[0])
        np.random.set_state(self._outer[1])
        torch.set_rng_state(self._outer[2])


class _Stream(IterableDataset):
    def __init__(self, cfg: StreamConfig, counter: SkipCounter) -> None:
        self.cfg, self.counter = cfg, counter
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by (persistent) workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def _batches(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Collate consecutive samples; the last batch may be short."""
        while batch := list(itertools.islice(samples, self.cfg.batch_size)):
            yield collate(batch, self.cfg.pad_id)


class TrainStream(_Stream):
    """Endless weighted per-sample mixture of `sources`; `batches_per_epoch` batches per rank per pass."""

    def __init__(self, sources: Sequence[Source], batches_per_epoch: int, cfg: StreamConfig,
                 counter: SkipCounter) -> None:
        super().__init__(cfg, counter)
        if not sources:
            raise ValueError("TrainStream: no training sources")
        if any(not s.weight > 0 for s in sources):
            raise ValueError(f"TrainStream: mixture weights must be > 0, got {[s.weight for s in sources]}")
        if all(s.every for s in sources):
            raise ValueError("TrainStream: every source is scheduled (every > 0); one must be drawn by weight")
        if min(s.start_epoch for s in sources if not s.every) != 0:
            raise ValueError(f"TrainStream: some task must start at epoch 0, got start epochs "
                             f"{ {s.task.name: s.start_epoch for s in sources} }")
        if batches_per_epoch < 1:
            raise ValueError(f"TrainStream: batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.sources, self.batches_per_epoch = list(sources), batches_per_epoch
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained on in that epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        """Batch i of an epoch comes from (logical) worker i % num_workers, a deterministic function of
        (seed, epoch, rank, worker, position). Resuming at batch `skip` of the epoch, physical worker w plays
        logical worker (w + skip) % num_workers, so the loader's round-robin continues at batch `skip`; each
        worker replays (decodes and preprocesses, so its RNG streams stay exact) but does not collate the
        samples of the batches it had already given."""
        worker, num_workers = _worker()
        epoch = int(self._epoch)
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == epoch else 0
        worker = (worker + skip) % num_workers
        quota = self.batches_per_epoch // num_workers + (worker < self.batches_per_epoch % num_workers)
        done = min(skip // num_workers + (worker < skip % num_workers), quota)
        tag = f"{self.cfg.seed}/{epoch}/{self.cfg.rank}/{worker}"
        rng = StreamRNG(tag)
        streams = [self._samples(s, f"{tag}/{i}", rng) for i, s in enumerate(self.sources)]
        samples = self._mix(streams, random.Random(tag), epoch)
        collections.deque(itertools.islice(samples, done * self.cfg.batch_size), maxlen=0)  # fast-forward
        scheduled = any(s.every for s in self.sources)
        batches = self._grouped_batches(samples) if scheduled else self._batches(s for _, s in samples)
        return itertools.islice(batches, quota - done)

    def _mix(self, streams: list[Iterator[list]], rng: random.Random, epoch: int) -> Iterator[tuple[int, Any]]:
        """(group, sample): per row a source drawn by weight among those whose `start_epoch` has come (group 0),
        after every `every`-th row `count` rows of each scheduled source (group 1)."""
        drawn = [i for i, s in enumerate(self.sources) if not s.every]
        weights = [self.sources[i].weight * (epoch >= self.sources[i].start_epoch) for i in drawn]
        scheduled = [i for i, s in enumerate(self.sources) if s.every and epoch >= s.start_epoch]
        rows = 0
        while True:
            for sample in next(streams[rng.choices(drawn, weights)[0]]):
                yield 0, sample
            rows += 1
            for i in scheduled:
                if rows % self.sources[i].every == 0:
                    for _ in range(self.sources[i].count):
                        for sample in next(streams[i]):
                            yield 1, sample

    def _grouped_batches(self, samples: Iterator[tuple[int, Any]]) -> Iterator[dict]:
        """`batch_size` samples per batch as two mini-batches: rows of drawn sources, of scheduled ones (either
        may be empty: every pretraining batch has the same form, so the same loss normalisation)."""
        while batch := list(itertools.islice(samples, self.cfg.batch_size)):
            groups: list[list] = [[], []]
            for group, sample in batch:
                groups[group].append(sample)
            yield collate_mini_batches(groups, self.cfg.pad_id)

    def _samples(self, source: Source, tag: str, aug_rng: StreamRNG | None = None) -> Iterator[list]:
        """Endless preprocessed rows (lists of samples) of one source: random shards (with replacement),
        shuffled raw samples."""
        rng = random.Random(tag)
        raw = wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(
            self._resampled(source, rng))
        skipped, last_skip = 0, [""]
        for item in raw:
            sample = prepare(item, source.task, "train", self.cfg, self.counter, aug_rng, last_skip)
            skipped = 0 if sample is not None else skipped + 1
            if sample is not None:
                yield sample
            elif skipped >= MAX_CONSECUTIVE_SKIPS:
                self._give_up(source, f"{skipped} consecutive samples were skipped, the last: {last_skip[0]}")

    def _resampled(self, source: Source, rng: random.Random) -> Iterator[dict]:
        """Raw samples of shards drawn with replacement, forever."""
        empty = 0
        while True:
            n = 0
            for n, raw in enumerate(read_shard(rng.choice(source.urls), self.counter), 1):
                yield raw
            empty = 0 if n else empty + 1
            if empty >= MAX_CONSECUTIVE_SKIPS:
                self._give_up(source, f"{empty} consecutive shards gave no samples")

    def _give_up(self, source: Source, why: str) -> None:
        counts = {reason: n for reason, n in self.counter.counts().items() if n}
        raise DataError(f"no usable training data for task {source.task.name!r}: {why}; skipped so far {counts}")


class EvalStream(_Stream):
    """One finite pass over `source` split over ranks and workers: each sample exactly once overall."""

    def __init__(self, source: Source, split: str, cfg: StreamConfig, counter: SkipCounter) -> None:
        super().__init__(cfg, counter)
        self.source, self.split = source, split

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        reader, readers = self.cfg.rank * num_workers + worker, self.cfg.world_size * num_workers
        _seed_worker(f"{self.cfg.seed}/{self.split}/{self.cfg.rank}/{worker}")
        raws = self._my_raw_samples(reader, readers)
        rows = (prepare(r, self.source.task, self.split, self.cfg, self.counter) for r in raws)
        return self._batches(s for row in rows if row is not None for s in row)

    def _my_raw_samples(self, reader: int, readers: int) -> Iterator[dict]:
        urls = self.source.urls
        if len(urls) >= readers:  # whole shards per reader
            return itertools.chain.from_iterable(read_shard(u, self.counter) for u in urls[reader::readers])
        # fewer shards than readers: all read everything (shard errors counted by one reader), keep every n-th
        everything = itertools.chain.from_iterable(
            read_shard(u, self.counter if i % readers == reader else None) for i, u in enumerate(urls))
        return itertools.islice(everything, reader, None, readers)


class ShardLoader(DataLoader):
    """DataLoader over a `TrainStream`/`EvalStream` (which yield whole batches); before each pass it sets
    the stream's epoch from `epoch_fn()` (e.g. the trainer's current epoch), else counts passes itself."""

    def __init__(self, dataset: _Stream, epoch_fn: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())  # the loader's base seed: never the trainer's RNG
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn, self.next_epoch = epoch_fn, 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self.next_epoch if epoch is None else epoch
        self.dataset.set_epoch(epoch)
        self.next_epoch = epoch + 1
        return super().__iter__()
