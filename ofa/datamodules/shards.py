"""Reading WebDataset tar shards: pattern expansion, streaming, decoding, and skip-and-count.

Nothing here raises on bad data: a missing or corrupt shard, broken JSON, an undecodable or oversized
image is skipped and counted by reason in a `SkipCounter`, which lives in shared memory so that counts
made in DataLoader worker processes are visible to the main process (and its logger).
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import braceexpand
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info
from webdataset.tariterators import base_plus_ext

from ofa.errors import RunConfigError
from ofa.utils.logging import get_logger

log = logging.getLogger(__name__)

REASONS = ("missing_file", "not_tar", "truncated_tar", "read_error", "bad_json", "bad_image",
           "too_many_pixels", "missing_fields", "preprocess_error")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
Shards = str | Sequence[str]


class SkipCounter:
    """Per-reason counts of skipped shards/samples; one shared-memory row per DataLoader worker (no races)."""

    def __init__(self, num_workers: int = 0) -> None:
        self._counts = torch.zeros(num_workers + 1, len(REASONS), dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()

    def add(self, reason: str, detail: str = "") -> None:
        """Count one skip; the first skip of each reason in a process is also logged as a warning."""
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        info = get_worker_info()
        row = 0 if info is None else min(info.id + 1, self._counts.shape[0] - 1)
        self._counts[row, REASONS.index(reason)] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("skipping data (%s): %s (further skips of this kind are counted silently)", reason, detail)

    def counts(self) -> dict[str, int]:
        """reason -> number of skips, summed over the main process and all workers."""
        return dict(zip(REASONS, self._counts.sum(0).tolist()))

    def total(self) -> int:
        return int(self._counts.sum())


class SkipSample(Exception):
    """A sample that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---- shard lists -----------------------------------------------------------------------------------
def expand_shards(patterns: Shards) -> list[str]:
    """Shard URLs from brace patterns (`train-{000000..000009}.tar`), `::`-joined or listed patterns, local
    globs (`train-*.tar`) and `pipe:` URLs. Local files are not checked here: a missing one is skipped later."""
    if isinstance(patterns, str):
        patterns = patterns.split("::")
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(str(pattern)):
            if not url.startswith("pipe:") and any(c in url for c in "*?["):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise ValueError(f"shard pattern {url!r} matches no files")
                urls.extend(matches)
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"no shards in {patterns!r}")
    return urls


SHARD_KEYS = ("train_shards", "val_shards", "test_shards")


def shard_patterns_read(data: Any, task_names: Iterable[str]) -> dict[str, Any]:
    """Config key -> pattern of every shard pattern the tasks' sources read: a task's own
    (`data.sources.<task>.<key>`, null = no such split) or else the shared one (`data.<key>`), each once."""
    sources = data.get("sources") or {}
    found: dict[str, Any] = {}
    for name in task_names:
        entry = sources.get(name) or {}
        for key in SHARD_KEYS:
            if key in entry and entry.get(key) != data.get(key):  # schema-typed entries inherit the shared one
                found[f"data.sources.{name}.{key}"] = entry.get(key)
            else:
                found.setdefault(f"data.{key}", data.get(key))
    return found


def check_shards(data: Any, task_names: Iterable[str]) -> None:
    """Before any work: a shard pattern read by the tasks' sources none of whose local files exist raises
    `RunConfigError` naming its key; some missing ones are only warned about (they are skipped and counted
    while reading). Remote and `pipe:` URLs are not checked."""
    check_log = get_logger(f"{__name__}.check")  # rank 0 only: every rank runs the same check
    for key, pattern in shard_patterns_read(data, task_names).items():
        if not pattern:
            continue
        try:
            urls = expand_shards(pattern)
        except ValueError as err:
            raise RunConfigError(f"{key}={pattern}: {err}") from None
        local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
        missing = [u for u in local if not os.path.exists(u)]
        if missing and len(missing) < len(local):  # some exist: read the rest, skip and count these
            check_log.warning("%s: %d of %d shard files do not exist, e.g. %s", key, len(missing), len(urls),
                              missing[0])
        elif missing:
            raise RunConfigError(f"{key}={pattern}: {len(missing)} of {len(urls)} shard files do not exist, "
                                 f"e.g. {missing[0]}")


# ---- reading ---------------------------------------------------------------------------------------
def classify_error(exn: BaseException) -> str:
    """Skip reason of an exception raised while opening or reading a shard."""
    if isinstance(exn, FileNotFoundError):
        return "missing_file"
    if isinstance(exn, EOFError) or (isinstance(exn, tarfile.ReadError) and "unexpected end" in str(exn)):
        return "truncated_tar"
    if isinstance(exn, tarfile.TarError):
        return "not_tar"
    return "read_error"


def read_shard(url: str, counter: SkipCounter | None) -> Iterator[dict[str, Any]]:
    """Raw samples `{"__key__", "__url__", ext: bytes}` of one shard. On an error, the complete samples
    before the damage have been yielded and the rest is skipped and counted (if `counter` is given: with
    several readers of one shard, only its owner counts)."""
    try:
        stream = wds.gopen(url)
        try:
            yield from _samples_in_tar(stream, url)
        finally:
            stream.close()
    except Exception as exn:  # noqa: BLE001 - every read failure is skipped and counted
        if counter is not None:
            counter.add(classify_error(exn), f"{url}: {exn}")


def _samples_in_tar(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """Consecutive members `<key>.<ext>` -> one sample (WebDataset's convention); a sample is yielded as soon
    as the next key's header is read, so a truncated member loses only its own sample."""
    sample: dict[str, Any] | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            key, ext = base_plus_ext(info.name)
            if not info.isreg() or key is None:
                continue
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            sample = sample or {"__key__": key, "__url__": url}
            sample[ext.lower()] = tar.extractfile(info).read()
            tar.members = []  # streaming: do not keep every header
    if sample is not None:
        yield sample


# ---- decoding --------------------------------------------------------------------------------------
def decode_sample(raw: dict[str, Any], max_image_pixels: int) -> dict[str, Any]:
    """Raw tar sample -> the json dict plus `"image"` (PIL RGB or None) and `"__key__"`; raises SkipSample."""
    if "json" not in raw:
        raise SkipSample("bad_json", f"{raw['__key__']}: no .json member")
    try:
        record = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise SkipSample("bad_json", f"{raw['__key__']}: {exn}") from None
    if not isinstance(record, dict):
        raise SkipSample("bad_json", f"{raw['__key__']}: json is a {type(record).__name__}, not an object")
    image_key = next((k for k in IMAGE_KEYS if k in raw), None)
    record["image"] = decode_image(raw[image_key], max_image_pixels, raw["__key__"]) if image_key else None
    record["__key__"] = raw["__key__"]
    return record


def decode_image(data: bytes, max_pixels: int, key: str = "") -> Image.Image:
    """PIL RGB image; the pixel count is checked from the header before the pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise SkipSample("too_many_pixels", f"{key}: {width}x{height} > {max_pixels} pixels")
            return image.convert("RGB")  # decodes
    except Image.DecompressionBombError as exn:
        raise SkipSample("too_many_pixels", f"{key}: {exn}") from None
    except SkipSample:
        raise
    except Exception as exn:  # noqa: BLE001 - PIL raises many types for bad bytes
        raise SkipSample("bad_image", f"{key}: {exn}") from None
