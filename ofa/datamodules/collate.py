"""`Sample`s (from `task.preprocess`) -> a batch with OFA's keys (docs/ARCHITECTURE.md, "Samples and batches").

Sequences are right-padded with `<pad>`. In a multitask batch some samples have no constraint mask: their
rows (and padded positions) are all-True. A batch of text-only samples only (`patch_mask` False for all)
has `patch_images=None`: the model then skips the ResNet, which gives the same outputs, since every image
key of such a batch is masked anyway.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ofa.tasks.base import Sample


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, Any]:
    """Batch of `samples`: `src_tokens` (B,S), `prev_output_tokens`/`target` (B,T), `patch_images` (B,3,H,W) ..."""
    _check(samples)
    src = pad_tokens([s.source for s in samples], pad_id)  # (B, S)
    target = pad_tokens([s.target for s in samples], pad_id)  # (B, T)
    patch_masks = torch.tensor([s.patch_mask for s in samples])  # (B,)
    batch: dict[str, Any] = {
        "id": [s.id for s in samples],
        "task": [s.task for s in samples],
        "src_tokens": src,
        "src_lengths": src.ne(pad_id).sum(1),  # (B,)
        "patch_images": _stack_images(samples) if patch_masks.any() else None,  # (B, 3, H, W)
        "patch_masks": patch_masks,
        "prev_output_tokens": pad_tokens([s.prev_output_tokens for s in samples], pad_id),  # (B, T)
        "target": target,
        "conf": torch.tensor([s.conf for s in samples]),  # (B,)
        "ntokens": int(target.ne(pad_id).sum()),
        "decoder_prompts": [s.decoder_prompt for s in samples],
        "meta": [s.meta for s in samples],
    }
    if any(s.constraint_mask is not None for s in samples):
        batch["constraint_masks"] = _constraint_masks(samples, target.shape[1])  # (B, T, V)
    if any(s.code_mask for s in samples):
        batch["code_masks"] = torch.tensor([s.code_mask for s in samples])  # (B,)
    patch_nums = {s.sample_patch_num for s in samples}
    if len(patch_nums) > 1:
        raise ValueError(f"collate: samples of one batch keep different numbers of patches {sorted(map(str, patch_nums))}")
    if None not in patch_nums:
        batch["sample_patch_num"] = patch_nums.pop()
    return batch


def collate_mini_batches(groups: Sequence[Sequence[Sample]], pad_id: int) -> dict[str, Any]:
    """OFA's pretraining collater: one batch of several mini-batches, each collated on its own (own padding,
    own image size, own patch sampling): `{"mini_batches": [batch, or None for an empty group], "id", "task"
    (all rows), "ntokens" (sum)}`. The lit module optimises the sum of each mini-batch's per-token loss."""
    parts = [collate(g, pad_id) if g else None for g in groups]
    rows = [p for p in parts if p is not None]
    return {"mini_batches": parts, "id": [i for p in rows for i in p["id"]],
            "task": [t for p in rows for t in p["task"]], "ntokens": sum(p["ntokens"] for p in rows)}


def pad_tokens(seqs: Sequence[Tensor], pad_id: int) -> Tensor:
    """Right-pad 1-D long tensors to (B, max_len)."""
    return pad_sequence([torch.as_tensor(s, dtype=torch.long) for s in seqs], batch_first=True,
                        padding_value=pad_id)


def _check(samples: Sequence[Sample]) -> None:
    if not samples:
        raise ValueError("collate: empty list of samples")
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"collate: sample {i} is a {type(s).__name__}, not an ofa.tasks.base.Sample "
                            "(build samples with Task.make_sample)")


def _stack_images(samples: Sequence[Sample]) -> Tensor:
    """(B, 3, H, W): the images of the samples that have one (one size); text-only samples get zeros of it."""
    shapes = {tuple(s.patch_image.shape) for s in samples if s.patch_mask}
    if len(shapes) > 1:
        raise ValueError(f"collate: patch_image shapes differ within a batch {sorted(shapes)}; "
                         "give every task of a mixture the same image_size")
    shape = shapes.pop()
    return torch.stack([s.patch_image if s.patch_mask else s.patch_image.new_zeros(shape) for s in samples])


def _constraint_masks(samples: Sequence[Sample], length: int) -> Tensor:
    """(B, T, V) bool; rows beyond a sample's mask, and samples without one, are all True (no constraint)."""
    vocab = next(s.constraint_mask.shape[-1] for s in samples if s.constraint_mask is not None)
    out = torch.ones(len(samples), length, vocab, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask = s.constraint_mask
        if mask is None:
            continue
        if mask.dim() != 2 or mask.shape[0] > length or mask.shape[1] != vocab:
            raise ValueError(f"collate: constraint_mask of sample {i} has shape {tuple(mask.shape)}, "
                             f"expected (<= {length}, {vocab})")
        out[i, : mask.shape[0]] = mask
    return out
