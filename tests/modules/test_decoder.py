"""ofa/modules/decoder.py: the causal / padding self-mask, encoder key padding in cross-attention, per-sample
image-code positions, the cache on text-only inputs, argument checks, the output projection fast path.

Cache equivalence with code samples, reordering and beam groups on the whole model: test_model.py."""

from __future__ import annotations

import pytest
import torch

from ofa.modules import decoder as decoder_module
from ofa.modules.decoder import ONEDNN_LINEAR, PACKED_LINEAR, DecoderCache, packed_weight, projection_form


@pytest.fixture(scope="module")
def setup(tiny_model, tiny):
    batch = tiny.batch()
    with torch.no_grad():
        enc = tiny_model.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
    return tiny_model.decoder, enc, batch


def test_self_mask_is_causal_and_hides_padded_keys(setup, tiny):
    dec, _, _ = setup
    tokens = torch.tensor([[0, 5, 6, 7], [0, 5, tiny.pad, tiny.pad]])
    mask = dec._self_mask(tokens, start=0)  # (B, 1, T, T)
    inf = float("-inf")
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].tolist() == [[0, inf, inf, inf], [0, 0, inf, inf], [0, 0, 0, inf], [0, 0, 0, 0]]
    assert mask[1, 0, 3].tolist() == [0, 0, inf, 0]  # a padded key is hidden, but a position sees itself
    assert dec._self_mask(tokens, start=2).shape == (2, 1, 2, 4)  # only the new query rows
    assert dec._self_mask(tokens[:1], start=3) is None  # one new position, nothing padded


@torch.no_grad()
def test_changing_later_tokens_leaves_earlier_logits(setup, tiny):
    dec, enc, batch = setup
    tokens = batch["prev_output_tokens"]
    later = tokens.clone()
    later[:, 4:] = torch.randint(4, tiny.vocab, (4, tokens.size(1) - 4), generator=torch.Generator().manual_seed(5))
    a, b = dec(tokens, enc, batch["code_masks"]), dec(later, enc, batch["code_masks"])
    assert a.shape == (4, tokens.size(1), tiny.vocab)
    assert (a[:, :4] - b[:, :4]).abs().max() <= 1e-5
    assert (a[0, 4:] - b[0, 4:]).abs().max() > 1e-3


@torch.no_grad()
def test_padded_encoder_positions_are_ignored(setup):
    dec, enc, batch = setup
    hidden = enc.hidden.clone()
    hidden[enc.padding_mask] = 50.0  # text-only sample's patches, sample 0's pad tokens
    changed = type(enc)(hidden, enc.padding_mask, enc.position_embeddings)
    tokens, code = batch["prev_output_tokens"], batch["code_masks"]
    assert (dec(tokens, enc, code) - dec(tokens, changed, code)).abs().max() <= 1e-5
    hidden[0, 0] = 50.0  # a real patch of sample 0: it must matter
    moved = dec(tokens, type(enc)(hidden, enc.padding_mask, enc.position_embeddings), code)
    assert (dec(tokens, enc, code) - moved)[0].abs().max() > 1e-3


@torch.no_grad()
def test_code_positions_are_per_sample(setup):
    """Image-code samples use the 2-D code positions; the other rows of the batch are not affected."""
    dec, enc, batch = setup
    tokens = batch["prev_output_tokens"]
    text = dec(tokens, enc, torch.zeros(4, dtype=torch.bool))
    mixed = dec(tokens, enc, batch["code_masks"])  # rows 2 and 3 are code samples
    assert (mixed[:2] - text[:2]).abs().max() <= 1e-5
    assert (mixed[2:, 1:] - text[2:, 1:]).abs().amax(dim=(1, 2)).min() > 1e-3


@torch.no_grad()
def test_cache_on_text_only_inputs(tiny_model, tiny):
    """No images and no code samples: step-by-step decoding equals teacher forcing."""
    batch = tiny.batch()
    dec, enc = tiny_model.decoder, tiny_model.encode(batch["src_tokens"])
    tokens = batch["prev_output_tokens"]
    full = dec(tokens, enc)
    cache = DecoderCache(len(dec.layers))
    steps = []
    for t in range(1, tokens.size(1) + 1):
        steps.append(dec(tokens[:, :t], enc, cache=cache))
        assert cache.length == t
    keep = tokens.ne(tiny.pad)
    assert (torch.cat(steps, 1) - full)[keep].abs().max() <= 1e-5
    assert cache.static["self_pos_k"].size(0) == 1  # positions shared by the batch: one row


@torch.no_grad()
def test_cache_index_select_keeps_shared_rows(setup):
    dec, enc, batch = setup
    cache = DecoderCache(len(dec.layers))
    dec(batch["prev_output_tokens"][:, :2], enc, cache=cache)
    k = cache.layers[0]["self"]["k"]
    cache.index_select(torch.tensor([2, 2, 1, 0]))
    assert torch.equal(cache.layers[0]["self"]["k"], k[[2, 2, 1, 0]])
    assert cache.static["self_pos_k"].size(0) == 1


def test_argument_checks(setup):
    dec, enc, batch = setup
    tokens = batch["prev_output_tokens"]
    with pytest.raises(ValueError, match="not a multiple"):
        dec(tokens[:3], enc)
    cache = DecoderCache(len(dec.layers))
    with torch.no_grad():
        dec(tokens[:, :3], enc, cache=cache)
        with pytest.raises(ValueError, match="already holds 3"):
            dec(tokens[:, :3], enc, cache=cache)


@pytest.mark.parametrize(("rows", "form"), [(1, "onednn"), (4, "packed"), (12, "packed"), (130, "packed"),
                                             (4, "flipped"), (12, "onednn"), (130, "straight")])
def test_every_projection_form_equals_the_linear_layer(setup, rows, form, monkeypatch):
    dec, _, _ = setup
    x = torch.randn(rows, 1, 32)
    if form in ("onednn", "packed") and not (PACKED_LINEAR if form == "packed" else ONEDNN_LINEAR):
        pytest.skip("this torch build has no oneDNN linear (or no packed weight for it)")
    if (rows, form) in ((4, "flipped"), (12, "onednn"), (130, "straight")):  # a build without packed weights
        monkeypatch.setattr(decoder_module, "PACKED_LINEAR", False)
    with torch.no_grad():
        assert projection_form(x[:, 0]) == form
        fast = dec.project(x)  # CPU, no autograd
    assert fast.shape == (rows, 1, dec.output_projection.weight.size(0))
    assert torch.allclose(fast, dec.output_projection(x).detach(), atol=1e-6)


@pytest.mark.skipif(not PACKED_LINEAR, reason="this torch build has no packed oneDNN linear")
@torch.no_grad()
def test_the_packed_weight_is_kept_and_follows_every_update_of_the_weight():
    """One packed copy per weight, made again after an optimizer step or a loaded state dict (in-place updates),
    so the logits are always those of the weight as it is now; dropped with the weight. A weight made under
    `torch.inference_mode` (no version counter to follow) is used unpacked."""
    layer = torch.nn.Linear(32, 300, bias=False)
    x = torch.randn(6, 32)
    first = packed_weight(layer.weight)
    assert packed_weight(layer.weight) is first  # kept between calls
    with torch.enable_grad():
        layer(x).square().sum().backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    assert packed_weight(layer.weight) is not first
    assert torch.allclose(decoder_module.project_rows(x, layer.weight), layer(x), atol=1e-6)
    layer.load_state_dict({"weight": torch.randn(300, 32)})
    assert torch.allclose(decoder_module.project_rows(x, layer.weight), layer(x), atol=1e-6)
    entries = len(decoder_module._PACKED)
    del layer, first
    assert len(decoder_module._PACKED) == entries - 1
    with torch.inference_mode():  # a weight without a version counter: used as it is
        made_here = torch.nn.Linear(32, 300, bias=False)
        assert packed_weight(made_here.weight) is made_here.weight
        assert torch.allclose(decoder_module.project_rows(x, made_here.weight), made_here(x), atol=1e-6)


def test_no_onednn_projection_under_autocast():
    x = torch.randn(12, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert projection_form(x) == "straight"
    assert projection_form(x.bfloat16()) == "straight"


@pytest.mark.parametrize("beams", [1, 3, 33])  # 4, 12, 132 rows: the packed oneDNN linear
@torch.no_grad()
def test_reused_logits_of_a_cached_step_equal_the_full_pass(setup, beams):
    """Cached steps with `reuse_logits` (the generator's) write the last position's logits into one buffer of the
    cache, in each of the forms `projection_form` picks: all equal the uncached logits."""
    dec, enc, batch = setup
    tokens = batch["prev_output_tokens"][:, :4].repeat_interleave(beams, 0)  # (4 * beams, 4): beams share a row
    cache = DecoderCache(len(dec.layers), reuse_logits=True)
    dec(tokens[:, :2], enc, cache=cache)
    buffers = set()
    for t in (3, 4):
        step = dec(tokens[:, :t], enc, cache=cache)  # (R, 1, V)
        assert (step[:, 0] - dec(tokens[:, :t], enc)[:, -1]).abs().max() <= 1e-5
        buffers.add(step.data_ptr())
    assert len(buffers) == 1


@torch.no_grad()
def test_hidden_states(setup):
    dec, enc, batch = setup
    x, states = dec.extract_features(batch["prev_output_tokens"], enc, return_hidden_states=True)
    assert x.shape == (4, 7, 32) and len(states) == len(dec.layers) + 1
    assert torch.allclose(dec.layer_norm(states[-1]), x, atol=1e-6)
