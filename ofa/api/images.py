"""Images in and out of the API: any common input as a PIL RGB image, boxes drawn on a picture."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

ImageLike = Any  # a path (str / Path), a PIL image, a (H, W, 3) uint8 array or a (3, H, W) tensor in [0, 1]


def to_image(image: ImageLike) -> Image.Image:
    """`image` as a PIL RGB image (a file is opened and fully read here, so a corrupt one fails here)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    raise TypeError(f"an image must be a path, a PIL image, a uint8 array or a tensor, not {type(image).__name__}")


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] = (),
               colour: str = "#ff2020") -> Image.Image:
    """A copy of `image` with each xyxy pixel box outlined (line width ~1% of the image) and labelled."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 100))
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(c) for c in box)
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=colour, width=width)
        if i < len(labels) and labels[i]:
            draw.text((min(x0, x1) + width, min(y0, y1) + width), labels[i], fill=colour)
    return out
