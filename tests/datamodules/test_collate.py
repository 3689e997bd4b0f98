"""`ofa.datamodules.collate`: OFA's batch keys, right padding, optional per-sample fields in mixed batches."""
from __future__ import annotations

import pytest
import torch

from ofa.datamodules.collate import collate
from ofa.tasks.base import Sample

PAD = 1


def sample(src: list[int], tgt: list[int], task: str = "caption", **extra) -> Sample:
    fields = {"id": f"{task}-{len(src)}", "task": task, "source": torch.tensor(src),
              "prev_output_tokens": torch.tensor([0] + tgt), "target": torch.tensor(tgt + [2]),
              "decoder_prompt": torch.tensor([0]), "patch_image": torch.zeros(3, 8, 8), "patch_mask": True,
              "conf": 0.5, "meta": {"n": len(tgt)}}
    return Sample(**{**fields, **extra})


def test_shapes_and_padding() -> None:
    batch = collate([sample([0, 5, 6, 2], [7]), sample([0, 5, 2], [7, 8, 9])], PAD)
    assert batch["src_tokens"].tolist() == [[0, 5, 6, 2], [0, 5, 2, PAD]]
    assert batch["src_lengths"].tolist() == [4, 3]
    assert batch["prev_output_tokens"].tolist() == [[0, 7, PAD, PAD], [0, 7, 8, 9]]
    assert batch["target"].tolist() == [[7, 2, PAD, PAD], [7, 8, 9, 2]]
    assert batch["patch_images"].shape == (2, 3, 8, 8) and batch["patch_masks"].tolist() == [True, True]
    assert batch["conf"].tolist() == [0.5, 0.5] and batch["ntokens"] == 6
    assert batch["id"] == ["caption-4", "caption-3"] and batch["meta"] == [{"n": 1}, {"n": 3}]
    assert not {"constraint_masks", "code_masks"} & set(batch)
    assert [p.tolist() for p in batch["decoder_prompts"]] == [[0], [0]]


def test_optional_fields_in_a_mixed_batch() -> None:
    vocab = 10
    mask = torch.zeros(2, vocab, dtype=torch.bool)
    mask[:, 3] = True
    vqa = sample([0, 4, 2], [3], task="vqa", constraint_mask=mask, decoder_prompt=torch.tensor([0, 4]))
    gen = sample([0, 4, 2], [5, 6, 7], task="image_gen", code_mask=True)
    batch = collate([vqa, gen], PAD)
    cm = batch["constraint_masks"]
    assert cm.shape == (2, 4, vocab) and cm.dtype == torch.bool
    assert cm[0, :2].equal(mask) and cm[0, 2:].all() and cm[1].all()  # padded rows and no-mask rows: True
    assert batch["code_masks"].tolist() == [False, True]
    assert [p.tolist() for p in batch["decoder_prompts"]] == [[0, 4], [0]]


def test_text_only_samples_take_the_image_size_of_the_batch() -> None:
    """A text task in a mixture (its zero image has its own config size) batches with any image task."""
    text = sample([0, 5, 2], [7], task="text_infill", patch_image=torch.zeros(3, 256, 256), patch_mask=False)
    image = sample([0, 5, 2], [7], patch_image=torch.ones(3, 8, 8))
    batch = collate([text, image], PAD)
    assert batch["patch_images"].shape == (2, 3, 8, 8) and batch["patch_masks"].tolist() == [False, True]
    assert batch["patch_images"][0].abs().sum() == 0 and bool((batch["patch_images"][1] == 1).all())
    assert collate([text], PAD)["patch_images"] is None  # text only: the ResNet is skipped


def test_bad_batches_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([], PAD)
    with pytest.raises(TypeError, match=r"sample 1 is a dict, not an ofa.tasks.base.Sample"):
        collate([sample([0, 2], [3]), {"source": torch.tensor([0, 2])}], PAD)
    other = sample([0, 2], [3], patch_image=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="patch_image shapes differ"):
        collate([sample([0, 2], [3]), other], PAD)
