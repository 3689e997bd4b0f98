"""ofa/modules/encoder.py: EncoderOut shapes and reordering, batch and padding independence, the relative
bucket layout of [image ; text], the grid limit, hidden states.

Whole-model padding and text-only behaviour: test_model.py."""

from __future__ import annotations

import pytest
import torch

from ofa.modules.encoder import EncoderOut, select_rows


def encode(model, batch: dict, **kw) -> EncoderOut:
    return model.encoder(batch["src_tokens"], batch["patch_images"], batch["patch_masks"], **kw)


@torch.no_grad()
def test_shapes_with_and_without_images(tiny_model, tiny):
    batch = tiny.batch()
    enc = encode(tiny_model, batch)
    assert enc.hidden.shape == (4, 4 + 9, 32) and enc.position_embeddings.shape == (4, 13, 32)
    assert enc.padding_mask.dtype == torch.bool and enc.padding_mask.shape == (4, 13)
    assert enc.padding_mask[0, 4 + 6:].all() and not enc.padding_mask[0, :4 + 6].any()  # pad tokens
    assert enc.position_embeddings.stride(0) == 0  # one row of positions shared by the batch
    text = tiny_model.encoder(batch["src_tokens"])
    assert text.hidden.shape == (4, 9, 32) and torch.equal(text.padding_mask, batch["src_tokens"].eq(tiny.pad))


@torch.no_grad()
def test_each_sample_is_encoded_as_if_alone(tiny_model, tiny):
    """Batch padding (other samples' longer text) and batch neighbours do not change a sample's output."""
    batch = tiny.batch()
    enc = encode(tiny_model, batch)
    alone = tiny_model.encoder(batch["src_tokens"][:1, :6], batch["patch_images"][:1], batch["patch_masks"][:1])
    assert (enc.hidden[0, :4 + 6] - alone.hidden[0]).abs().max() <= 1e-5
    rest = encode(tiny_model, {k: v[2:] for k, v in batch.items()})
    assert (enc.hidden[2:] - rest.hidden).abs().max() <= 1e-5


@torch.no_grad()
def test_hidden_states(tiny_model, tiny):
    batch = tiny.batch()
    enc = encode(tiny_model, batch, return_hidden_states=True)
    assert len(enc.hidden_states) == tiny_model.cfg.encoder_layers + 1
    assert torch.allclose(tiny_model.encoder.layer_norm(enc.hidden_states[-1]), enc.hidden, atol=1e-6)


@torch.no_grad()
def test_index_select_reorders_and_keeps_shared_rows_as_views(tiny_model, tiny):
    enc = encode(tiny_model, tiny.batch())
    order = torch.tensor([3, 3, 0])
    sel = enc.index_select(order)
    assert torch.equal(sel.hidden, enc.hidden[order]) and torch.equal(sel.padding_mask, enc.padding_mask[order])
    assert sel.position_embeddings.shape == (3, 13, 32) and sel.position_embeddings.stride(0) == 0
    assert sel.source[0]() is enc and torch.equal(sel.source[1], order)
    assert torch.equal(select_rows(torch.arange(6).view(3, 2), torch.tensor([2, 0])), torch.tensor([[4, 5], [0, 1]]))


def test_relative_buckets_layout(tiny_model, tiny):
    """Image x image pairs use the image table, text x text the token table, mixed pairs the zero row."""
    enc = tiny_model.encoder
    ids = torch.tensor([[1, 2, 43, 44]])  # a 2x2 grid (image_bucket_size 42)
    buckets = enc._rel_buckets(ids, 5, torch.device("cpu"), (2, 2))  # (1, 4 + 5, 4 + 5)
    n_img = enc.image_rel_pos_table_list[0].num_embeddings
    zero_row = n_img + enc.token_rel_pos_table_list[0].num_embeddings
    assert buckets.shape == (1, 9, 9)
    assert (buckets[0, :4, :4] < n_img).all()
    assert ((buckets[0, 4:, 4:] >= n_img) & (buckets[0, 4:, 4:] < zero_row)).all()
    assert (buckets[0, :4, 4:] == zero_row).all() and (buckets[0, 4:, :4] == zero_row).all()
    assert enc._rel_buckets(ids, 5, torch.device("cpu"), (2, 2)) is buckets  # cached per (grid, length)


def test_zero_row_adds_no_bias(tiny_model):
    enc = tiny_model.encoder
    ids = torch.tensor([[1, 2, 43, 44]])
    buckets = enc._rel_buckets(ids, 3, torch.device("cpu"), (2, 2))
    bias = enc._layer_bias(torch.zeros(1, 4, 7, 7), None, buckets, 0)  # (1, H, S, S)
    assert bias.shape == (1, 4, 7, 7)
    assert bias[:, :, :4, 4:].eq(0).all() and bias[:, :, 4:, :4].eq(0).all()
    assert bias[:, :, :4, :4].ne(0).any() and bias[:, :, 4:, 4:].ne(0).any()


def test_a_patch_grid_beyond_the_bucket_size_is_refused(tiny):
    from ofa.modules.model import OFAModel

    model = OFAModel(tiny.config(image_bucket_size=2)).eval()
    batch = tiny.batch(b=1)
    with torch.no_grad():
        encode(model, batch)  # 32x32: a 2x2 grid fits
        with pytest.raises(ValueError, match="image_bucket_size=2"):
            model.encoder(batch["src_tokens"], torch.randn(1, 3, 48, 48))


@torch.no_grad()
def test_sampled_patches_keep_their_positions(tiny_model, tiny):
    """sample_patch_num: a random subset of patches, each with its own grid position (per-sample rows)."""
    batch = tiny.batch()
    torch.manual_seed(0)
    enc = encode(tiny_model, batch, sample_patch_num=2)
    assert enc.hidden.shape == (4, 2 + 9, 32) and enc.position_embeddings.stride(0) != 0
    full = encode(tiny_model, batch)
    image_pos = full.position_embeddings[0, :4]  # (4, D): the four patches' position embeddings
    for row in enc.position_embeddings[:, :2].reshape(-1, 32):
        assert (row - image_pos).abs().amax(-1).min() <= 1e-6  # each sampled patch keeps one of them
