"""OFA's pretraining image transforms (spec §3.11) with torchvision transforms v2; boxes follow every op.

- image-text pairs (caption, VQA), training: `RandomResize(S..1.25 S, longer side <= 1.75 S)` (OFA at S = 384:
  384..480, max 672) -> `CenterCrop(S)` -> `RandomAugment(N=2, M=7)` over OFA's ten ops -> normalise;
- visual grounding, training: the same resize -> `ObjectCenterCrop(S)` (an S x S crop centred on the box,
  shifted to stay inside the image; the box is clipped to it);
- detection, training: horizontal flip -> `LargeScaleJitter(output S, scale 1.0-1.5)` (rescale so that the
  shorter side is `scale * S`, then a random S x S crop at the same relative offset on both axes; boxes are
  clipped and boxes left empty are dropped, with their labels);
- evaluation: the square resize of fine-tuning (`ofa.tasks.transforms`).
All return `(pixels (3, S, S) normalised, boxes (N, 4) xyxy pixels of the output | None[, kept indices])`.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ofa.tasks.transforms import to_bounding_boxes

_BICUBIC = v2.InterpolationMode.BICUBIC
AUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
               "TranslateX", "TranslateY", "Rotate")  # OFA's list for image-text pairs
MAX_LEVEL = 10.0
FILL = [128, 128, 128]  # OFA's RandomAugment fills with grey


def resize_scales(image_size: int) -> tuple[list[int], int]:
    """OFA's `RandomResize(range(384, 481), max_size=672)` at S = 384, scaled to S: (sizes, max_size)."""
    return list(range(image_size, round(image_size * 480 / 384) + 1)), round(image_size * 672 / 384)


class RandomAugment:
    """OFA's `RandomAugment(N, M)` (`utils/vision_helper.py`): N ops drawn with replacement, each applied with
    probability 0.5 at level M/10: brightness/sharpness factor 1.8 M/10 + 0.1, shear 0.3 M/10, translate
    10 M/10 pixels, rotate 30 M/10 degrees (random sign); on uint8 image tensors (3, H, W)."""

    def __init__(self, n: int = 2, m: int = 7, ops: Sequence[str] = AUGMENT_OPS) -> None:
        unknown = set(ops) - set(AUGMENT_OPS)
        if unknown:
            raise ValueError(f"RandomAugment: unknown ops {sorted(unknown)}; choose from {AUGMENT_OPS}")
        self.n, self.level, self.ops = n, m / MAX_LEVEL, list(ops)

    def __call__(self, image: Tensor) -> Tensor:
        for name in random.choices(self.ops, k=self.n):
            if random.random() > 0.5:
                image = self.apply(name, image)
        return image

    def apply(self, name: str, image: Tensor) -> Tensor:
        sign = random.choice((-1.0, 1.0))
        level = self.level
        if name == "AutoContrast":
            return F.autocontrast(image)
        if name == "Equalize":
            return F.equalize(image)
        if name == "Brightness":
            return F.adjust_brightness(image, level * 1.8 + 0.1)
        if name == "Sharpness":
            return F.adjust_sharpness(image, level * 1.8 + 0.1)
        if name in ("ShearX", "ShearY"):
            angle = math.degrees(math.atan(sign * level * 0.3))
            shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
            return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=FILL)
        if name in ("TranslateX", "TranslateY"):
            shift = round(sign * level * 10)  # OFA: translate_const 10 pixels at level 10
            move = [shift, 0] if name == "TranslateX" else [0, shift]
            return F.affine(image, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], fill=FILL)
        if name == "Rotate":
            return F.rotate(image, sign * level * 30, fill=FILL)
        return image  # Identity


def _normalise(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(mean), list(std))


def _random_resize(image: Image.Image, boxes: Tensor | None, image_size: int) -> tuple[Tensor, Tensor | None]:
    """Shorter side drawn from OFA's scales (longer side capped): uint8 (3, H, W) and boxes."""
    sizes, max_size = resize_scales(image_size)
    resize = v2.RandomShortestSize(sizes, max_size=max_size, interpolation=_BICUBIC, antialias=True)
    if boxes is None:
        return resize(F.to_image(image)), None
    pixels, out = resize(F.to_image(image), to_bounding_boxes(boxes, image.size))
    return pixels, out


def image_text_transform(image_size: int, mean: Sequence[float], std: Sequence[float], augment: RandomAugment):
    """Caption / VQA training transform: `fn(image) -> (3, S, S)`."""
    def apply(image: Image.Image) -> Tensor:
        pixels, _ = _random_resize(image, None, image_size)
        pixels = F.center_crop(pixels, [image_size, image_size])  # pads (as OFA's) a side capped below S
        return _normalise(augment(pixels), mean, std)
    return apply


def object_center_crop(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """Grounding training transform: `fn(image, box) -> ((3, S, S), box (4,) in output pixels)`."""
    def apply(image: Image.Image, box: Sequence[float]) -> tuple[Tensor, Tensor]:
        pixels, boxes = _random_resize(image, [box], image_size)
        h, w = pixels.shape[-2:]
        x0, y0, x1, y1 = boxes[0].tolist()
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, image_size / 2
        left = max(cx - half + min(w - cx - half, 0), 0)
        top = max(cy - half + min(h - cy - half, 0), 0)
        left, top = int(round(left)), int(round(top))
        pixels, boxes = F.crop(pixels, top, left, image_size, image_size), F.crop(boxes, top, left, image_size,
                                                                                    image_size)
        boxes = F.clamp_bounding_boxes(boxes)
        return _normalise(pixels, mean, std), boxes.as_subclass(Tensor)[0]
    return apply


def large_scale_jitter(image_size: int, mean: Sequence[float], std: Sequence[float], scale_min: float = 1.0,
                       scale_max: float = 1.5, flip: bool = True):
    """Detection training transform: `fn(image, boxes (N, 4)) -> ((3, S, S), boxes (M, 4), kept (M,) indices)`."""
    def apply(image: Image.Image, boxes: Sequence) -> tuple[Tensor, Tensor, Tensor]:
        pixels, bb = F.to_image(image), to_bounding_boxes(boxes, image.size)
        if flip and random.random() < 0.5:
            pixels, bb = F.horizontal_flip(pixels), F.horizontal_flip(bb)
        h, w = pixels.shape[-2:]
        target = round((random.random() * (scale_max - scale_min) + scale_min) * image_size)
        factor = max(target / h, target / w)
        size = [max(round(h * factor), image_size), max(round(w * factor), image_size)]
        pixels = F.resize(pixels, size, interpolation=_BICUBIC, antialias=True)
        bb = F.resize(bb, size)
        fraction = random.random()  # OFA: one random fraction of the spare room on both axes
        top, left = round((size[0] - image_size) * fraction), round((size[1] - image_size) * fraction)
        pixels, bb = F.crop(pixels, top, left, image_size, image_size), F.crop(bb, top, left, image_size, image_size)
        out = F.clamp_bounding_boxes(bb).as_subclass(Tensor)  # (N, 4)
        kept = ((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])).nonzero().flatten()
        return _normalise(pixels, mean, std), out[kept], kept
    return apply

