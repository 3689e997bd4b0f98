"""Detection targets (four bins + class name per box, in annotation order) and OFA's large-scale jitter:
boxes follow the rescale and crop, boxes cropped away are dropped with their labels."""
from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from ofa.tasks.detection import DetectionConfig, DetectionTask, detections
from ofa.tasks.grounding import quantize_boxes
from ofa.tasks.pretrain_transforms import large_scale_jitter

RAW = {"id": "d1", "image": Image.new("RGB", (100, 50), (0, 0, 0)),
       "detections": [{"box": [0, 0, 20, 20], "label": "red circle"}, {"box": [70, 20, 100, 50], "label": "cat"}]}


@pytest.fixture(scope="module")
def task(tokenizer) -> DetectionTask:
    return DetectionTask(tokenizer, DetectionConfig(image_size=64, max_image_size=64, conf=2.0))


def test_evaluation_target_is_bins_and_names_in_order(task, tokenizer) -> None:
    sample = task.preprocess(RAW, "val")
    boxes = torch.tensor([[0, 0, 20 * 0.64, 20 * 1.28], [70 * 0.64, 20 * 1.28, 64, 64]])  # square resize
    bins = quantize_boxes(boxes, 64, tokenizer.num_bins) + tokenizer.bin_offset
    expected = torch.cat([bins[0], torch.tensor(tokenizer.encode(" red circle")),
                          bins[1], torch.tensor(tokenizer.encode(" cat")), torch.tensor([tokenizer.eos])])
    assert sample.target.tolist() == expected.tolist() and sample.conf == 2.0
    assert tokenizer.decode(sample.source.tolist()) == " what are the objects in the image?"


def test_jitter_crop_drops_boxes_it_cuts_away(monkeypatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.99)  # no flip, scale 1.495, crop at the bottom-right
    jitter = large_scale_jitter(64, (0.5,) * 3, (0.5,) * 3)
    pixels, boxes, kept = jitter(RAW["image"], [d["box"] for d in RAW["detections"]])
    # shorter side 50 -> round(1.495 * 64) = 96: scale 1.92 -> 192 x 96; crop offset (0.99 x 128, 0.99 x 32)
    assert pixels.shape == (3, 64, 64) and kept.tolist() == [1]
    left, top = round(128 * 0.99), round(32 * 0.99)
    expected = torch.tensor([[70 * 1.92 - left, 20 * 1.92 - top, 64, 64]])
    assert torch.allclose(boxes, expected, atol=0.5)


def test_flip_mirrors_boxes(monkeypatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.0)  # flip, scale 1.0, crop at the top-left
    _, boxes, kept = large_scale_jitter(64, (0.5,) * 3, (0.5,) * 3)(RAW["image"], [[0, 0, 20, 20]])
    # flipped to [80, 0, 100, 20], scale 64 / 50 = 1.28 -> width 128, crop [0, 64): the box is cut away
    assert kept.tolist() == [] and boxes.shape == (0, 4)


def test_training_sample_skips_images_without_boxes_left(task, monkeypatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert task.preprocess({**RAW, "detections": [{"box": [0, 0, 20, 20], "label": "x"}]}, "train") is None
    assert task.preprocess({**RAW, "detections": [{"box": [70, 0, 100, 20], "label": "x"}]}, "train") is not None


def test_synthetic_objects_name_colour_and_shape() -> None:
    raw = {"objects": [{"color": "red", "shape": "circle", "size": "large", "box": [1, 2, 3, 4]}]}
    assert detections(raw) == [([1, 2, 3, 4], "red circle")]
