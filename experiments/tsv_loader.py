"""Baseline for benchmarks only: read OFA's caption TSV rows directly, as OFA's `FileDataset` does.

OFA (`data/file_dataset.py` + `data/mm_data/caption_dataset.py`) indexes the line offsets of the TSV once,
then reads rows sequentially from its slice of the file, splits on tabs, takes the selected columns,
base64-decodes the image and opens it with PIL. Here the same read path feeds the platform's
`task.preprocess` and `collate`, so a benchmark compares only the storage/reading side (TSV + base64
vs. WebDataset tar shards). Unlike OFA, rows are sliced over ranks *and* DataLoader workers (OFA's
workers each hold a copy of the rank's reader), and a row that cannot be used raises (no skip-and-count):
use `ofa-convert-data` + `OFADataModule` for real data.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ofa.datamodules.collate import collate

CAPTION_COLUMNS = (0, 4, 2)  # OFA's selected_cols for caption files: uniq-id, image, caption


def line_offsets(path: str | Path) -> list[int]:
    """Byte offset of every line (OFA's `lineid_to_offset`, built by one pass over the file)."""
    offsets, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            offsets.append(pos)
            pos += len(line)
    return offsets


def row_slice(num_rows: int, reader: int, readers: int) -> tuple[int, int]:
    """Contiguous rows [start, end) of reader `reader` out of `readers` (the first ones get one more)."""
    base, extra = divmod(num_rows, readers)
    start = reader * base + min(reader, extra)
    return start, start + base + (reader < extra)


class TsvCaptionDataset(IterableDataset):
    """Samples of an OFA caption TSV (`uniq-id, image-id, caption, objects, image` by default), read
    sequentially by each (rank, worker) from its own slice of rows and passed through `task.preprocess`."""

    def __init__(self, path: str | Path, task: Any, split: str = "train", columns: Sequence[int] = CAPTION_COLUMNS,
                 rank: int = 0, world_size: int = 1, separator: str = "\t") -> None:
        self.path, self.task, self.split, self.columns = str(path), task, split, tuple(columns)
        self.rank, self.world_size, self.separator = rank, world_size, separator
        self.offsets = line_offsets(path)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        start, end = row_slice(len(self.offsets), self.rank * workers + worker, self.world_size * workers)
        if start == end:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offsets[start])
            for _ in range(end - start):
                sample = self.task.preprocess(self.parse(f.readline()), self.split)
                if sample is not None:
                    yield sample

    def parse(self, line: bytes) -> dict[str, Any]:
        """One TSV line -> the raw sample `task.preprocess` takes (as the shard reader builds it)."""
        values = line.decode("utf-8").rstrip("\n").split(self.separator)
        uniq_id, image_b64, caption = (values[c] for c in self.columns)
        image = Image.open(io.BytesIO(base64.urlsafe_b64decode(image_b64))).convert("RGB")
        return {"id": uniq_id, "captions": caption.split("&&"), "image": image, "__key__": uniq_id}


def build_tsv_loader(path: str | Path, task: Any, batch_size: int, num_workers: int, pad_id: int,
                     split: str = "train", **kwargs: Any) -> DataLoader:
    """DataLoader of collated batches over a caption TSV (workers decode and collate, as OFA's do)."""
    dataset = TsvCaptionDataset(path, task, split, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=partial(collate, pad_id=pad_id))


def write_caption_tsv(rows: Iterable[tuple[str, str, str, bytes]], path: str | Path) -> int:
    """Write `(uniq_id, image_id, caption, image_bytes)` rows in OFA's caption layout (image as standard
    base64, objects column empty), the inverse of `ofa-convert-data caption`; returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for uniq_id, image_id, caption, image in rows:
            f.write(f"{uniq_id}\t{image_id}\t{caption}\t\t{base64.b64encode(image).decode('ascii')}\n")
            n += 1
    return n
