"""Reference texts of the training shards, read once and summarised into a cache file beside the data:
SCST's CIDEr-D document frequencies (OFA ships `coco-train-words.p`; here they come from the run's own
training references, spec §4.2)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ofa.datamodules.shards import SkipCounter, read_shard
from ofa.tasks.scst import CiderD

log = logging.getLogger(__name__)  # every rank may build the cache: each says so


def shard_references(urls: list[str], field: str = "captions") -> Iterator[list[str]]:
    """The `field` list of every sample's json in the shards (images are not decoded)."""
    counter = SkipCounter()
    for url in urls:
        for raw in read_shard(url, counter):
            data = raw.get("json")
            if data is not None:
                texts = json.loads(data).get(field) or []
                yield [t for t in texts if isinstance(t, str) and t.strip()]


def cache_path(urls: list[str], name: str) -> Path | None:
    """`<first shard's folder>/<name>-<hash of the shard names, sizes and times>.json`; None for non-local shards."""
    if not all(os.path.isfile(u) for u in urls):
        return None
    key = json.dumps([(u, os.path.getsize(u), os.path.getmtime(u)) for u in urls])
    return Path(urls[0]).parent / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def cached_cider(urls: list[str], form: Callable[[str], str], field: str = "captions") -> CiderD:
    """CIDEr-D with the document frequencies of the shards' references (in `form`), computed once and cached."""
    path = cache_path(urls, "cider_df")
    if path is not None and path.exists():
        return CiderD.load(path)
    refs = [[form(t) for t in texts] for texts in shard_references(urls, field) if texts]
    scorer = CiderD.from_references(refs)
    if path is not None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        scorer.save(tmp)
        os.replace(tmp, path)  # atomic: concurrent ranks write the same content
        log.info("CIDEr-D document frequencies of %d training images cached in %s", len(refs), path)
    return scorer
