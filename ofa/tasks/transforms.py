"""Image (and box) transforms with torchvision transforms v2: boxes follow resizes, crops and flips.

OFA's fine-tuning default is a square bicubic resize (aspect ratio not kept) and (0.5, 0.5, 0.5)
normalisation (spec §3.1); grounding resizes to exactly S×S so boxes scale with the image
(x by S/w, y by S/h). OFA's RefCOCO recipe uses no augmentation at all (a flip would contradict
"left"/"right" in the expression), so box-aware augmentation here is opt-in.

`augment` values:
- "none": square resize (evaluation, and OFA's fine-tuning default).
- "flip": square resize + horizontal flip (train only).
- "crop_flip": random resized crop + flip; boxes clamped and sanitised (train only). When boxes are
  given and the crop loses one, the crop is re-drawn (up to `max_tries`), then falls back to "none",
  so the number of boxes never changes.
- "randaug": ImageNet-style train augmentation (random resized crop 0.08-1, flip, colour jitter 0.4,
  RandAugment(2, 9), random erasing 0.25): a torchvision approximation of OFA's timm pipeline (§3.7).
  Image-only: RandAugment's shears and rotations would not move boxes, so boxes are refused.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

AUGMENTS = ("none", "flip", "crop_flip", "randaug")
_BICUBIC = v2.InterpolationMode.BICUBIC
TransformFn = Callable[..., tuple[Tensor, Tensor | None]]


def _geometric_ops(image_size: int, train: bool, augment: str) -> list[v2.Transform]:
    """Resize/crop/flip ops (they act on image and boxes alike)."""
    if not train or augment in ("none", "flip"):
        ops: list[v2.Transform] = [v2.Resize((image_size, image_size), interpolation=_BICUBIC, antialias=True)]
    else:
        scale = (0.08, 1.0) if augment == "randaug" else (0.5, 1.0)
        ops = [v2.RandomResizedCrop(image_size, scale=scale, interpolation=_BICUBIC, antialias=True)]
    if train and augment != "none":
        ops.append(v2.RandomHorizontalFlip())
    if train and augment == "crop_flip":
        ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter=None)]
    return ops


def _build_pipeline(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                    augment: str) -> v2.Compose:
    ops: list[v2.Transform] = [v2.ToImage(), *_geometric_ops(image_size, train, augment)]
    if train and augment == "randaug":
        ops += [v2.ColorJitter(0.4, 0.4, 0.4), v2.RandAugment(num_ops=2, magnitude=9, interpolation=_BICUBIC)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if train and augment == "randaug":
        ops.append(v2.RandomErasing(p=0.25))
    return v2.Compose(ops)


def build_transform(
    image_size: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    train: bool = False,
    augment: str = "none",
    max_tries: int = 10,
) -> TransformFn:
    """Return `fn(image, boxes=None) -> (pixels (3,S,S) float, boxes (N,4) xyxy in resized pixels | None)`.

    See the module docstring for `augment`; evaluation (`train=False`) always uses the square resize.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    pipeline = _build_pipeline(image_size, mean, std, train, augment)
    fallback = _build_pipeline(image_size, mean, std, False, "none")
    may_drop = train and augment == "crop_flip"

    def apply(image: Image.Image, boxes: Tensor | Sequence | None = None) -> tuple[Tensor, Tensor | None]:
        if boxes is None:
            return pipeline(image), None
        if train and augment == "randaug":
            raise ValueError("augment='randaug' is image-only (classification); use 'crop_flip' with boxes")
        bb = to_bounding_boxes(boxes, image.size)
        for _ in range(max_tries if may_drop else 1):
            pixels, out = pipeline(image, bb)
            if out.shape[0] == bb.shape[0]:
                return pixels, out.as_subclass(Tensor)
        pixels, out = fallback(image, bb)  # every crop lost a box: plain resize keeps them all
        return pixels, out.as_subclass(Tensor)

    return apply


def to_bounding_boxes(boxes: Tensor | Sequence, size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """xyxy pixel boxes of an image of PIL `size` (w, h) -> `tv_tensors.BoundingBoxes` (N, 4)."""
    w, h = size
    data = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=(h, w))
