"""Image (and box) transforms with torchvision transforms v2: boxes follow resizes, crops and flips.

OFA's fine-tuning default is a square bicubic resize (aspect ratio not kept) and (0.5, 0.5, 0.5)
normalisation (spec §3.1); grounding resizes to exactly S×S so boxes scale with the image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2


def build_transform(
    image_size: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    train: bool = False,
    augment: str = "none",
) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """Return `fn(image, boxes=None) -> (pixels (3,S,S) float, boxes (N,4) xyxy in resized pixels | None)`.

    `augment`: "none" (eval and OFA's fine-tuning default), "flip" (horizontal flip, train only),
    "crop_flip" (random resized crop + flip, boxes sanitised).
    """
    ops: list[v2.Transform] = [v2.ToImage()]
    if train and augment == "crop_flip":
        ops += [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                                     antialias=True)]
    else:
        ops += [v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if train and augment in ("flip", "crop_flip"):
        ops += [v2.RandomHorizontalFlip()]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    pipeline = v2.Compose(ops)

    def apply(image: Image.Image, boxes: Tensor | Sequence | None = None) -> tuple[Tensor, Tensor | None]:
        if boxes is None:
            return pipeline(image), None
        w, h = image.size
        bb = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      format="XYXY", canvas_size=(h, w))
        pixels, bb = pipeline(image, bb)
        return pixels, bb.as_subclass(Tensor)

    return apply
