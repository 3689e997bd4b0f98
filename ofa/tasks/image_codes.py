"""What the tasks that write images share: `<code_i>` targets, the code-only constraint, VQGAN decoding.

OFA writes an image as the row-major codes of a VQGAN (spec §2, §7): code `c` is the token `<code_c>`
(`tokenizer.code_offset + c`); targets are the codes + `</s>`, the decoder uses its 2-D image positions
(`code_mask`), and the logits outside `[code_offset, code_offset + num_codes)` (besides the 4 specials)
are masked in the loss and in decoding (`--constraint-range`).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ofa.errors import RunConfigError

VQ_FACTOR = 8  # OFA's VQGAN downsamples 8x: a code per 8x8 pixels (spec §7)


def code_grid(image_size: int, factor: int = VQ_FACTOR) -> int:
    """Codes per side of an image of `image_size` pixels."""
    return image_size // factor


def code_range(tokenizer: Any, vqgan: str | None = None) -> tuple[int, int]:
    """The `<code_i>` ids `[start, end)` a target may use: OFA's `--constraint-range=50265,58457` for its
    vocabulary and VQGAN; with a smaller codebook (`vqgan`'s n_embed < the tokenizer's code tokens) only its
    codes, so that nothing is generated that the VQGAN cannot decode."""
    codes = tokenizer.num_codes
    if vqgan:
        codes = min(codes, codebook_size(str(Path(vqgan).expanduser())))
    return tokenizer.code_offset, tokenizer.code_offset + codes


@lru_cache(maxsize=8)
def codebook_size(vqgan: str) -> int:
    """`n_embed` of the VQGAN at `vqgan` (read from its model.yaml; the tokenizer's 8192 if it is absent)."""
    from ofa.vqgan_io import find_bundle, read_config

    try:
        return read_config(find_bundle(vqgan)[0]).n_embed
    except FileNotFoundError:
        return 1 << 62


def code_tokens(codes: Any, tokenizer: Any, expected: int) -> Tensor | None:
    """Codes (ints) -> `<code_i>` ids (N,); None if there are not `expected` codes or one is out of range."""
    try:
        ids = torch.as_tensor(codes, dtype=torch.long).flatten()
    except (TypeError, ValueError, RuntimeError):
        return None
    if ids.numel() != expected or bool((ids < 0).any()) or bool((ids >= tokenizer.num_codes).any()):
        return None
    return ids + tokenizer.code_offset


def hypothesis_codes(tokens: Tensor, tokenizer: Any, expected: int) -> Tensor:
    """A generated hypothesis (codes + `</s>`) -> code indices (expected,); a short one is padded with code 0."""
    codes = tokens[tokens.ge(tokenizer.code_offset) & tokens.lt(tokenizer.code_offset + tokenizer.num_codes)]
    codes = (codes - tokenizer.code_offset)[:expected]
    return torch.cat([codes, codes.new_zeros(expected - codes.numel())])


def check_code_grid(prefix: str, image_size: int, model_cfg: Any, factor: int = VQ_FACTOR) -> None:
    """The task's code grid must be the model's (`model.code_image_size`): the decoder's 2-D positions of a
    code follow that grid row by row, so another grid would put every code at a wrong position."""
    model_size = getattr(model_cfg, "code_image_size", None)
    if model_size is not None and code_grid(model_size, factor) != code_grid(image_size, factor):
        raise RunConfigError(f"{prefix}.code_image_size={image_size} gives a {code_grid(image_size, factor)}^2 "
                             f"code grid but model.code_image_size={model_size} a {code_grid(model_size, factor)}^2 "
                             f"one; set model.code_image_size={image_size}")
    side = code_grid(image_size, factor)
    bucket = getattr(model_cfg, "image_bucket_size", None)
    if bucket is not None and side > bucket:
        raise RunConfigError(f"{prefix}.code_image_size={image_size} gives {side} codes per side but "
                             f"model.image_bucket_size={bucket} allows at most {bucket}")


@lru_cache(maxsize=4)
def load_tokenizer_model(path: str) -> Any:
    """The VQGAN at `path` (a dir with model.yaml + last.ckpt), loaded once per process, in eval mode."""
    from ofa.vqgan_io import load_vqgan

    return load_vqgan(path).eval().requires_grad_(False)


@torch.no_grad()
def decode_codes(vqgan: Any, codes: Tensor, batch_size: int = 64) -> Tensor:
    """(N, h*w) code indices -> (N, 3, H, W) images in [0, 1] (OFA: decode, clamp to [-1, 1], (x+1)/2)."""
    device = next(vqgan.parameters()).device
    side = math.isqrt(codes.size(1))
    out = [vqgan.decode(chunk.to(device).view(-1, side, side)).clamp(-1, 1).add(1).div(2).cpu()
           for chunk in codes.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 3, side * VQ_FACTOR, side * VQ_FACTOR)
