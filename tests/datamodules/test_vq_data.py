"""The VQ tokenizer's image data (`ofa.datamodules.vq_data`): random 64x64 crops in [-1, 1] for training, the
same centre crops every validation, bad samples skipped and counted."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from ofa.datamodules.vq_data import VQDataConfig, VQDataModule, VQSource, crop, to_tensor


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def scene(i: int, size: tuple[int, int]) -> Image.Image:
    """A coloured background with a square whose place depends on `i`."""
    image = Image.new("RGB", size, (20 * i % 255, 100, 200))
    image.paste((255, 0, 0), (i % 10, 5, i % 10 + 12, 17))
    return image


def write_shard(path: Path, members: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for member in members:
            writer.write(member)
    return str(path)


def sample(key: str, image: Image.Image) -> dict:
    return {"__key__": key, "png": png(image), "json": json.dumps({"id": key}).encode()}


@pytest.fixture
def shards(tmp_path: Path) -> dict[str, str]:
    small = [sample(f"s{i}", scene(i, (64, 64))) for i in range(10)]
    large = [sample(f"l{i}", scene(i, (100, 80))) for i in range(10)]  # not square: centre-cropped first
    return {"small": write_shard(tmp_path / "small.tar", small), "large": write_shard(tmp_path / "large.tar", large)}


def datamodule(shards: dict[str, str], **kwargs) -> VQDataModule:
    sources = {"small": VQSource(shards["small"], shards["small"], [64]),
               "large": VQSource(shards["large"], shards["large"], [64, 128])}
    return VQDataModule(VQDataConfig(sources=sources, **{"batch_size": 4, "batches_per_epoch": 3, **kwargs}))


def test_training_crops_are_64_in_range(shards: dict[str, str]) -> None:
    loader = datamodule(shards).train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for batch in batches:
        assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1


def test_training_stream_is_a_function_of_the_epoch(shards: dict[str, str]) -> None:
    def epoch(n: int) -> torch.Tensor:
        loader = datamodule(shards).train_dataloader()
        loader.set_epoch(n)
        return torch.cat([b["image"] for b in loader])

    assert torch.equal(epoch(0), epoch(0))
    assert not torch.equal(epoch(0), epoch(1))


def test_validation_is_every_image_centre_cropped_the_same_every_time(shards: dict[str, str]) -> None:
    dm = datamodule(shards, eval_batch_size=4)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert dm.val_groups() == ["small_64", "large_64", "large_128"]
    assert [b["group"] for b in first] == ["small_64"] * 3 + ["large_64"] * 3 + ["large_128"] * 3
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second))
    large_128 = torch.cat([b["image"] for b in first if b["group"] == "large_128"])
    assert large_128.shape == (10, 3, 64, 64)
    resized = scene(0, (100, 80)).crop((10, 0, 90, 80)).resize((128, 128), Image.Resampling.LANCZOS)
    assert torch.equal(large_128[0], to_tensor(resized.crop((32, 32, 96, 96))))  # the central 64x64 of 128x128


def test_whole_64_images_are_unchanged(shards: dict[str, str]) -> None:
    image = scene(3, (64, 64))
    assert torch.equal(to_tensor(crop(image, 64, 64, None)), to_tensor(image))
    assert to_tensor(image).min() >= -1 and to_tensor(Image.new("RGB", (2, 2), (255, 255, 255))).eq(1).all()


def test_a_corrupt_member_is_skipped_and_counted(tmp_path: Path) -> None:
    good = [sample(f"g{i}", scene(i, (64, 64))) for i in range(4)]
    bad_image = {"__key__": "bad", "png": b"not a png", "json": b"{}"}
    no_image = {"__key__": "noimage", "json": b"{}"}
    path = write_shard(tmp_path / "mixed.tar", [good[0], bad_image, good[1], no_image, good[2], good[3]])
    dm = VQDataModule(VQDataConfig(sources={"mixed": VQSource(path, path, [64])}, eval_batch_size=10,
                                   batches_per_epoch=2))
    (batch,) = list(dm.val_dataloader())
    assert batch["image"].shape[0] == 4
    counts = dm.skip_counts("val")
    assert counts["bad_image"] == 1 and counts["missing_fields"] == 1
    train = list(dm.train_dataloader())  # the same shard for training: skipped there too, still full batches
    assert all(b["image"].shape == (16, 3, 64, 64) for b in train)
    assert dm.skip_counts("train")["bad_image"] >= 1


def test_sizes_smaller_than_the_crop_are_refused(shards: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="sizes"):
        VQDataConfig(sources={"small": VQSource(shards["small"], None, [32])})
