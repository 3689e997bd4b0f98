"""Box-aware transforms: boxes stay in sync with the pixels under resize, flip and crop."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from ofa.tasks.transforms import build_transform

BOX = [10.0, 5.0, 60.0, 45.0]  # xyxy in a 100x50 image


def _image_with_box(box: list[float] = BOX, size: tuple[int, int] = (100, 50)) -> Image.Image:
    """White image with the box filled black, so the pixels show where the box went."""
    image = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(0, 0, 0))
    return image


def _inside_is_dark(pixels: torch.Tensor, box: torch.Tensor, margin: int = 2) -> bool:
    """Pixels (normalised to [-1, 1]) strictly inside the box are dark, just outside them bright."""
    x0, y0, x1, y1 = [int(round(v)) for v in box.tolist()]
    gray = pixels.mean(0)  # (S, S)
    inside = gray[y0 + margin: y1 - margin, x0 + margin: x1 - margin].mean()
    left = gray[y0 + margin: y1 - margin, : max(x0 - margin, 1)].mean() if x0 > margin else torch.tensor(1.0)
    return bool(inside < -0.8) and bool(left > 0.8)


def test_square_resize_scales_boxes_per_axis() -> None:
    pixels, boxes = build_transform(64)(_image_with_box(), [BOX])
    assert pixels.shape == (3, 64, 64)
    # x scales by 64/100, y by 64/50: aspect ratio is not kept
    assert boxes[0].tolist() == pytest.approx([6.4, 6.4, 38.4, 57.6])
    assert _inside_is_dark(pixels, boxes[0])


def test_without_boxes_returns_none() -> None:
    pixels, boxes = build_transform(32)(_image_with_box())
    assert pixels.shape == (3, 32, 32) and boxes is None


def test_normalisation() -> None:
    pixels, _ = build_transform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(Image.new("RGB", (8, 8), "white"))
    assert torch.allclose(pixels, torch.ones_like(pixels))


def test_flip_keeps_boxes_in_sync() -> None:
    transform = build_transform(64, train=True, augment="flip")
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, boxes = transform(_image_with_box(), [BOX])
        flipped = boxes[0, 0].item() != pytest.approx(6.4)
        if flipped:  # x -> 64 - x, corners swapped
            assert boxes[0].tolist() == pytest.approx([64 - 38.4, 6.4, 64 - 6.4, 57.6])
        else:
            assert boxes[0].tolist() == pytest.approx([6.4, 6.4, 38.4, 57.6])
        assert _inside_is_dark(pixels, boxes[0])
        seen.add(flipped)
    assert seen == {True, False}


def test_crop_flip_keeps_every_box_and_stays_in_sync() -> None:
    transform = build_transform(64, train=True, augment="crop_flip")
    image = _image_with_box([30.0, 10.0, 70.0, 40.0])
    for seed in range(10):
        torch.manual_seed(seed)
        pixels, boxes = transform(image, [[30.0, 10.0, 70.0, 40.0]])
        assert boxes.shape == (1, 4)
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        x0, y0, x1, y1 = boxes[0].round().long().tolist()
        assert pixels.mean(0)[y0:y1, x0:x1].mean() < 0  # the dark box is where the box says


def test_crop_that_loses_the_box_falls_back_to_resize() -> None:
    transform = build_transform(64, train=True, augment="crop_flip", max_tries=0)
    pixels, boxes = transform(_image_with_box(), [BOX])
    assert boxes[0].tolist() == pytest.approx([6.4, 6.4, 38.4, 57.6])
    assert _inside_is_dark(pixels, boxes[0])


def test_randaug_is_image_only() -> None:
    transform = build_transform(48, train=True, augment="randaug")
    torch.manual_seed(0)
    pixels, _ = transform(_image_with_box())
    assert pixels.shape == (3, 48, 48)
    with pytest.raises(ValueError, match="image-only"):
        transform(_image_with_box(), [BOX])


def test_evaluation_ignores_augment() -> None:
    image = _image_with_box()
    a = build_transform(32, train=False, augment="crop_flip")(image, [BOX])
    b = build_transform(32)(image, [BOX])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_unknown_augment_fails() -> None:
    with pytest.raises(ValueError, match="augment"):
        build_transform(32, augment="mixup")
