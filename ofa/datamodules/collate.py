"""Samples (from `task.preprocess`) -> a batch with OFA's keys (docs/ARCHITECTURE.md, "Samples and batches").

Sequences are right-padded with `<pad>`. Optional fields may be present on some samples only (a multitask
batch): `constraint_masks` get all-True rows for samples without one (and for padded positions),
`code_masks` default to False, `decoder_prompts` to an empty prompt.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

REQUIRED = ("source", "prev_output_tokens", "target", "patch_image", "patch_mask")


def collate(samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Batch of `samples`: `src_tokens` (B,S), `prev_output_tokens`/`target` (B,T), `patch_images` (B,3,H,W) ..."""
    _check(samples)
    src = pad_tokens([s["source"] for s in samples], pad_id)  # (B, S)
    target = pad_tokens([s["target"] for s in samples], pad_id)  # (B, T)
    batch: dict[str, Any] = {
        "id": [s.get("id") for s in samples],
        "task": [s.get("task") for s in samples],
        "src_tokens": src,
        "src_lengths": src.ne(pad_id).sum(1),  # (B,)
        "patch_images": _stack_images(samples),  # (B, 3, H, W)
        "patch_masks": torch.tensor([bool(s["patch_mask"]) for s in samples]),  # (B,)
        "prev_output_tokens": pad_tokens([s["prev_output_tokens"] for s in samples], pad_id),  # (B, T)
        "target": target,
        "conf": torch.tensor([float(s.get("conf", 1.0)) for s in samples]),  # (B,)
        "ntokens": int(target.ne(pad_id).sum()),
        "meta": [s.get("meta", {}) for s in samples],
    }
    if any(s.get("constraint_mask") is not None for s in samples):
        batch["constraint_masks"] = _constraint_masks(samples, target.shape[1])  # (B, T, V)
    if any(s.get("code_mask") is not None for s in samples):
        batch["code_masks"] = torch.tensor([bool(s.get("code_mask", False)) for s in samples])
    if any(s.get("decoder_prompt") is not None for s in samples):
        empty = torch.zeros(0, dtype=torch.long)
        batch["decoder_prompts"] = [s["decoder_prompt"] if s.get("decoder_prompt") is not None else empty
                                    for s in samples]
    return batch


def pad_tokens(seqs: Sequence[Tensor], pad_id: int) -> Tensor:
    """Right-pad 1-D long tensors to (B, max_len)."""
    return pad_sequence([torch.as_tensor(s, dtype=torch.long) for s in seqs], batch_first=True,
                        padding_value=pad_id)


def _check(samples: Sequence[dict[str, Any]]) -> None:
    if not samples:
        raise ValueError("collate: empty list of samples")
    for i, s in enumerate(samples):
        missing = [k for k in REQUIRED if k not in s]
        if missing:
            raise ValueError(f"collate: sample {i} (id={s.get('id')!r}, task={s.get('task')!r}) lacks {missing}")


def _stack_images(samples: Sequence[dict[str, Any]]) -> Tensor:
    shapes = {tuple(s["patch_image"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"collate: patch_image shapes differ within a batch {sorted(shapes)}; "
                         "give every task of a mixture the same image_size")
    return torch.stack([s["patch_image"] for s in samples])


def _constraint_masks(samples: Sequence[dict[str, Any]], length: int) -> Tensor:
    """(B, T, V) bool; rows beyond a sample's mask, and samples without one, are all True (no constraint)."""
    vocab = next(s["constraint_mask"].shape[-1] for s in samples if s.get("constraint_mask") is not None)
    out = torch.ones(len(samples), length, vocab, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask = s.get("constraint_mask")
        if mask is None:
            continue
        if mask.dim() != 2 or mask.shape[0] > length or mask.shape[1] != vocab:
            raise ValueError(f"collate: constraint_mask of sample {i} has shape {tuple(mask.shape)}, "
                             f"expected (<= {length}, {vocab})")
        out[i, : mask.shape[0]] = mask
    return out
