"""Images only, for training the VQ image tokenizer (`python train_vq.py`): shards -> batches `{"image":
(B, 3, S, S) in [-1, 1], "group": name}`.

Each source is a shard pattern with the sizes its images are used at. An image is centre-cropped to a square
and resized (LANCZOS, as OFA's code extraction, `generate_code.py`) to a size, then cropped to `crop_size`:
- training: per sample a source (by weight) and one of its sizes, a random crop and a left-right flip
  (`flip`; a flipped shape is still the same shape); each source is read forever, its shards in a fresh
  random order each pass, through a shuffle buffer; an epoch is `batches_per_epoch` batches;
- validation: every image of a source's val shards (at most `max_val_images`) at each of its sizes, centre
  crop, in shard order: one group `<source>_<size>` per (source, size), a batch never mixes groups.
So `sizes: [64]` trains and scores whole 64x64 images (text-to-image targets) and `sizes: [128]` the
central 64x64 of 128x128 images (image infilling's targets). Unreadable shards and samples are skipped and
counted (`skip_counts`, read by `ofa.callbacks.DataSkipLogger`).
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ofa.datamodules.pipeline import ShardLoader
from ofa.datamodules.shards import IMAGE_KEYS, SkipCounter, SkipSample, decode_image, expand_shards, read_shard

SPLITS = ("train", "val")


@dataclass
class VQSource:
    """One kind of image: its shards and the sizes (resized square side, before cropping) it is used at."""

    train_shards: Optional[str] = None
    val_shards: Optional[str] = None
    sizes: list[int] = field(default_factory=lambda: [64])
    weight: float = 1.0


@dataclass
class VQDataConfig:
    """`VQDataModule`'s settings (the `data` node of conf/train_vq.yaml)."""

    sources: dict[str, Optional[VQSource]] = field(default_factory=dict)  # null: a source left out
    crop_size: int = 64
    flip: bool = True
    batch_size: int = 16
    eval_batch_size: int = 50
    batches_per_epoch: int = 100
    max_val_images: Optional[int] = None  # per source (all of its val shards: null)
    shuffle_buffer: int = 256
    num_workers: int = 0
    max_image_pixels: int = 50_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.sources = {k: v if isinstance(v, VQSource) else VQSource(**v) for k, v in self.sources.items() if v}
        for name, src in self.sources.items():
            small = [s for s in src.sizes if s < self.crop_size]
            if not src.sizes or small:
                raise ValueError(f"data.sources.{name}.sizes={src.sizes}: need sizes >= crop_size {self.crop_size}")


# ---- images ----------------------------------------------------------------------------------------
def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, resize to `size` x `size` (LANCZOS)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side)) if w != h else image
    return square if side == size else square.resize((size, size), Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1] (OFA's `2x - 1`)."""
    w, h = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1)


def crop(image: Image.Image, size: int, crop_size: int, rng: random.Random | None) -> Image.Image:
    """The image at `size`, then a `crop_size` crop: random with `rng`, else the centre."""
    image = square_resize(image, size)
    room = size - crop_size
    left, top = (rng.randint(0, room), rng.randint(0, room)) if rng else (room // 2, room // 2)
    return image.crop((left, top, left + crop_size, top + crop_size))


def shard_images(urls: list[str], counter: SkipCounter, max_pixels: int) -> Iterator[Image.Image]:
    """The decodable images of the shards in order; bad shards, members and images are skipped and counted."""
    for url in urls:
        for raw in read_shard(url, counter):
            key = next((k for k in IMAGE_KEYS if k in raw), None)
            if key is None:
                counter.add("missing_fields", f"{raw['__key__']}: no image member")
                continue
            try:
                yield decode_image(raw[key], max_pixels, raw["__key__"])
            except SkipSample as skip:
                counter.add(skip.reason, skip.detail)


def endless_images(urls: list[str], rng: random.Random, buffer_size: int, counter: SkipCounter,
                   max_pixels: int) -> Iterator[Image.Image]:
    """Images of the shards forever: a new random shard order each pass, through a shuffle buffer."""
    buffer: list[Image.Image] = []
    while True:
        order = rng.sample(urls, len(urls))
        found = 0
        for image in shard_images(order, counter, max_pixels):
            found += 1
            buffer.append(image)
            if len(buffer) >= buffer_size:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        if not found and not buffer:
            raise RuntimeError(f"no readable image in {len(urls)} shard(s), e.g. {urls[0]}")


# ---- streams ---------------------------------------------------------------------------------------
class TrainImages(IterableDataset):
    """`batches_per_epoch` batches of random crops per epoch (shared out over the loader's workers); the
    draws are a function of (seed, epoch, rank, worker) only."""

    def __init__(self, cfg: VQDataConfig, urls: dict[str, list[str]], counter: SkipCounter, rank: int = 0) -> None:
        self.cfg, self.urls, self.counter, self.rank = cfg, urls, counter, rank
        self.names = [n for n in cfg.sources if urls.get(n)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.cfg.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/{self.epoch}/{self.rank}/{worker}")
        streams = {n: endless_images(self.urls[n], rng, cfg.shuffle_buffer, self.counter, cfg.max_image_pixels)
                   for n in self.names}
        weights = [cfg.sources[n].weight for n in self.names]
        for _ in range(worker, cfg.batches_per_epoch, workers):  # the loader takes the workers in turn
            picks = rng.choices(self.names, weights, k=cfg.batch_size)
            yield {"image": torch.stack([self.sample(next(streams[n]), n, rng) for n in picks]), "group": "train"}

    def sample(self, image: Image.Image, name: str, rng: random.Random) -> torch.Tensor:
        """(3, crop, crop) in [-1, 1]: a random size of the source, a random crop, maybe flipped."""
        out = crop(image, rng.choice(self.cfg.sources[name].sizes), self.cfg.crop_size, rng)
        if self.cfg.flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out)


class ValImages(IterableDataset):
    """Every (source, size) group of the val images, centre crops, in order (main process only)."""

    def __init__(self, cfg: VQDataConfig, urls: dict[str, list[str]], counter: SkipCounter) -> None:
        self.cfg, self.urls, self.counter = cfg, urls, counter

    def set_epoch(self, epoch: int) -> None:  # the same images every time
        pass

    def groups(self) -> list[tuple[str, str, int]]:
        """(group name, source, size) in the order they are yielded."""
        return [(f"{n}_{s}", n, s) for n, src in self.cfg.sources.items() if self.urls.get(n) for s in src.sizes]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        for group, name, size in self.groups():
            images = shard_images(self.urls[name], self.counter, cfg.max_image_pixels)
            batch: list[torch.Tensor] = []
            for i, image in enumerate(images):
                if cfg.max_val_images is not None and i >= cfg.max_val_images:
                    break
                batch.append(to_tensor(crop(image, size, cfg.crop_size, None)))
                if len(batch) == cfg.eval_batch_size:
                    yield {"image": torch.stack(batch), "group": group}
                    batch = []
            if batch:
                yield {"image": torch.stack(batch), "group": group}


# ---- the datamodule --------------------------------------------------------------------------------
class VQDataModule(pl.LightningDataModule):
    """Training and validation images of the VQ tokenizer (module docstring)."""

    def __init__(self, cfg: VQDataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.urls = {split: {name: expand_shards(pattern) for name, src in cfg.sources.items()
                             if (pattern := getattr(src, f"{split}_shards"))} for split in SPLITS}
        if not self.urls["train"]:
            raise ValueError("data.sources: no source has train_shards")
        self.counters = {split: SkipCounter(cfg.num_workers if split == "train" else 0) for split in SPLITS}

    def train_dataloader(self) -> ShardLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        stream = TrainImages(self.cfg, self.urls["train"], self.counters["train"], rank)
        workers = self.cfg.num_workers
        return ShardLoader(stream, epoch_fn=self._epoch, num_workers=workers, persistent_workers=False)

    def val_dataloader(self) -> ShardLoader | list:
        if not self.urls["val"]:
            return []
        return ShardLoader(ValImages(self.cfg, self.urls["val"], self.counters["val"]), num_workers=0)

    def val_groups(self) -> list[str]:
        return [g for g, _, _ in ValImages(self.cfg, self.urls["val"], self.counters["val"]).groups()]

    def _epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def skip_counts(self, split: str | None = None) -> dict[str, int]:
        """reason -> skipped shards/samples of `split` (all splits: None); `test` has none."""
        counters = [self.counters[s] for s in SPLITS if split in (None, s)]
        totals: dict[str, int] = {}
        for counter in counters:
            for reason, n in counter.counts().items():
                totals[reason] = totals.get(reason, 0) + n
        return totals

