"""Shard reading: patterns, exactly-once evaluation over ranks and workers, skip-and-count of bad data."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from ofa.datamodules.pipeline import EvalStream, ShardLoader, Source, StreamConfig
from ofa.datamodules.shards import SkipCounter, expand_shards


def eval_ids(task, urls: list[str], rank: int = 0, world_size: int = 1, num_workers: int = 0,
             counter: SkipCounter | None = None, max_image_pixels: int = 50_000_000) -> list[str]:
    cfg = StreamConfig(batch_size=3, pad_id=1, rank=rank, world_size=world_size, max_image_pixels=max_image_pixels)
    stream = EvalStream(Source(task, urls), "val", cfg, counter or SkipCounter(num_workers))
    return [i for batch in ShardLoader(stream, num_workers=num_workers) for i in batch["id"]]


def test_expand_shards(synthetic_data_dir: Path, synthetic_shards: dict[str, str]) -> None:
    train = expand_shards(synthetic_shards["train"])
    assert [Path(u).name for u in train] == [f"train-{i:06d}.tar" for i in range(6)]
    assert expand_shards(str(synthetic_data_dir / "train-*.tar")) == train
    assert expand_shards([synthetic_shards["val"], synthetic_shards["test"]])[-1].endswith("test-000001.tar")
    assert len(expand_shards(synthetic_shards["val"] + "::" + synthetic_shards["test"])) == 4
    assert expand_shards("pipe:cat /x/a-{0..1}.tar") == ["pipe:cat /x/a-0.tar", "pipe:cat /x/a-1.tar"]
    with pytest.raises(ValueError, match="matches no files"):
        expand_shards(str(synthetic_data_dir / "nope-*.tar"))


def test_reading_a_split_yields_every_sample_once(stub_task, synthetic_shards: dict[str, str]) -> None:
    ids = eval_ids(stub_task(), expand_shards(synthetic_shards["train"]))
    assert sorted(ids) == [f"train-{i:06d}" for i in range(48)]
    piped = eval_ids(stub_task(), [f"pipe:cat {u}" for u in expand_shards(synthetic_shards["val"])])
    assert sorted(piped) == [f"val-{i:06d}" for i in range(16)]


class WorkerTagged:
    """A task that records, in each sample's `meta`, the id of the process that preprocessed it."""

    def __init__(self, task) -> None:
        self.task, self.name = task, task.name

    def preprocess(self, raw: dict, split: str):
        sample = self.task.preprocess(raw, split)
        sample.meta["pid"] = os.getpid()
        return sample


@pytest.mark.parametrize("split", ["train", "val"])  # 6 shards: whole shards per reader; 2: every 4th sample
def test_two_ranks_two_workers_cover_every_sample_once(stub_task, synthetic_shards: dict[str, str],
                                                        split: str) -> None:
    urls = expand_shards(synthetic_shards[split])
    ids = []
    for rank in (0, 1):
        cfg = StreamConfig(batch_size=3, pad_id=1, rank=rank, world_size=2)
        stream = EvalStream(Source(WorkerTagged(stub_task()), urls), "val", cfg, SkipCounter(2))
        batches = list(ShardLoader(stream, num_workers=2))
        rank_pids = {m["pid"] for b in batches for m in b["meta"]}
        assert len(rank_pids) == 2 and os.getpid() not in rank_pids  # both worker processes read data
        ids += [i for b in batches for i in b["id"]]
    n = 48 if split == "train" else 16
    assert sorted(ids) == [f"{split}-{i:06d}" for i in range(n)]


# ---- corrupt data --------------------------------------------------------------------------------------
def jpeg(size: tuple[int, int] = (8, 8), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def record(key: str, **fields) -> bytes:
    return json.dumps({"id": key, "width": 8, "height": 8, "captions": ["a red square"], **fields}).encode()


def write_tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for s in samples:
            writer.write(s)
    return path


@pytest.fixture
def corrupt_shards(tmp_path: Path) -> list[str]:
    rows = [{"__key__": "good0", "jpg": jpeg(), "json": record("good0")},
            {"__key__": "badjson", "jpg": jpeg(), "json": b"{not json"},
            {"__key__": "nojson", "jpg": jpeg()},
            {"__key__": "badimage", "jpg": b"\xff\xd8 not really a jpeg", "json": record("badimage")},
            {"__key__": "bomb", "png": jpeg((3000, 3000), "PNG"), "json": record("bomb")},
            {"__key__": "nocaption", "jpg": jpeg(), "json": record("nocaption", captions=[])},
            {"__key__": "good1", "jpg": jpeg(), "json": record("good1")}]
    mixed = write_tar(tmp_path / "mixed.tar", rows)
    full = write_tar(tmp_path / "full.tar", [{"__key__": f"t{i}", "jpg": jpeg(), "json": record(f"t{i}")}
                                             for i in range(4)])
    with tarfile.open(full) as tar:
        cut = tar.getmember("t2.jpg").offset_data + 10
    (tmp_path / "truncated.tar").write_bytes(full.read_bytes()[:cut])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar file\n" * 50)
    shutil.copy(full, tmp_path / "good.tar")
    names = ["mixed", "truncated", "garbage", "missing", "good"]
    return [str(tmp_path / f"{n}.tar") for n in names]


def test_corrupt_data_is_skipped_and_counted_across_workers(stub_task, corrupt_shards: list[str]) -> None:
    counter = SkipCounter(num_workers=2)
    ids = eval_ids(stub_task(), corrupt_shards, num_workers=2, counter=counter, max_image_pixels=1_000_000)
    # the truncated shard gives the samples before its damaged member (t0, t1), the good one all four
    assert sorted(ids) == ["good0", "good1", "t0", "t0", "t1", "t1", "t2", "t3"]
    counts = {k: v for k, v in counter.counts().items() if v}
    assert counts == {"missing_file": 1, "not_tar": 1, "truncated_tar": 1, "bad_json": 2, "bad_image": 1,
                      "too_many_pixels": 1, "missing_fields": 1}
    assert counter.total() == 8


def test_a_failing_preprocess_is_counted_not_raised(stub_task, synthetic_shards: dict[str, str]) -> None:
    task = stub_task()
    task.preprocess = lambda raw, split: 1 / 0
    counter = SkipCounter()
    assert eval_ids(task, expand_shards(synthetic_shards["val"]), counter=counter) == []
    assert counter.counts()["preprocess_error"] == 16
