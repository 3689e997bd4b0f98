"""OFAModel behaviour on a tiny random model: caching, gradients, padding, masks, presets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ofa.modules.config import PRESETS, OFAConfig
from ofa.modules.model import OFAModel, count_parameters

# tiny configs, models and batches: tests/modules/conftest.py (`tiny`, `tiny_model`)


@pytest.fixture(scope="module")
def model(tiny_model) -> OFAModel:
    return tiny_model


def encode(model: OFAModel, batch: dict):
    return model.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])


@torch.no_grad()
def test_incremental_equals_full_with_code_samples(model, tiny):
    batch = tiny.batch()
    enc = encode(model, batch)
    tokens, code = batch["prev_output_tokens"], batch["code_masks"]
    full = model.decode(tokens, enc, code)  # (B, T, V)
    cache = model.new_cache()
    steps = [model.decode(tokens[:, :t], enc, code, cache) for t in range(1, tokens.size(1) + 1)]
    assert all(s.shape == (4, 1, tiny.vocab) for s in steps)
    keep = tokens.ne(tiny.pad)
    assert (torch.cat(steps, 1) - full)[keep].abs().max() <= 1e-5


@torch.no_grad()
def test_cache_primed_with_a_prefix_then_reordered(model, tiny):
    batch = tiny.batch()
    enc, tokens, code = encode(model, batch), batch["prev_output_tokens"], batch["code_masks"]
    full = model.decode(tokens, enc, code)
    cache = model.new_cache()
    model.decode(tokens[:, :3], enc, code, cache)  # three positions in one call
    assert cache.length == 3
    order = torch.tensor([3, 3, 0, 2])  # beam search: reorder and repeat rows
    cache.index_select(order)
    step = model.decode(tokens[order, :4], enc.index_select(order), code[order], cache)
    assert (step[:, 0] - full[order, 3]).abs().max() <= 1e-5


@torch.no_grad()
def test_encoder_rows_shared_by_groups_of_target_rows(model, tiny):
    """Beam search layout: one encoder row serves G consecutive target rows, cached or not."""
    batch, g = tiny.batch(), 3
    enc = encode(model, batch)
    rows = torch.arange(4).repeat_interleave(g)
    tokens, code = batch["prev_output_tokens"][rows], batch["code_masks"][rows]
    g3 = torch.Generator().manual_seed(3)
    tokens[1::g, 2:] = torch.randint(4, tiny.vocab, (4, tokens.size(1) - 2), generator=g3)
    repeated = model.decode(tokens, enc.index_select(rows), code)  # (B*G, T, V)
    assert (model.decode(tokens, enc, code) - repeated).abs().max() <= 1e-5
    cache = model.new_cache()
    steps = torch.cat([model.decode(tokens[:, :t], enc, code, cache) for t in range(1, tokens.size(1) + 1)], 1)
    keep = tokens.ne(tiny.pad)
    assert (steps - repeated)[keep].abs().max() <= 1e-5


@torch.no_grad()
def test_cache_follows_a_shrunk_encoder_out(model, tiny):
    """Samples finish: the encoder output is index_selected and the cached cross-attention follows it."""
    batch, g = tiny.batch(), 2
    enc, tokens, code = encode(model, batch), batch["prev_output_tokens"], batch["code_masks"]
    full = model.decode(tokens, enc, code)
    rows = torch.arange(4).repeat_interleave(g)
    cache = model.new_cache()
    model.decode(tokens[rows, :3], enc, code[rows], cache)
    keep = torch.tensor([3, 0])  # samples 1 and 2 finished; the survivors are reordered too
    kept_rows = (keep[:, None] * g + torch.arange(g)).view(-1)
    cache.index_select(kept_rows)
    small = enc.index_select(keep)
    k_proj = model.decoder.layers[0].encoder_attn.k_proj
    calls = []
    hook = k_proj.register_forward_hook(lambda *args: calls.append(1))
    try:
        step = model.decode(tokens[rows][kept_rows, :4], small, code[rows][kept_rows], cache)  # (4, 1, V)
    finally:
        hook.remove()
    assert (step[:, 0] - full[keep.repeat_interleave(g), 3]).abs().max() <= 1e-5
    assert not calls and cache.enc is small  # cross-attention keys reordered, not recomputed


def test_every_parameter_gets_a_gradient(tiny):
    torch.manual_seed(0)
    model = OFAModel(tiny.config(dropout=0.1, encoder_drop_path_rate=0.1, resnet_drop_path_rate=0.1)).train()
    batch = tiny.batch()
    logits = model(**batch)
    logits.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@torch.no_grad()
def test_padding_does_not_change_outputs(model, tiny):
    batch = tiny.batch()
    more = dict(batch)
    more["src_tokens"] = torch.cat([batch["src_tokens"], torch.full((4, 5), tiny.pad)], 1)
    more["prev_output_tokens"] = torch.cat([batch["prev_output_tokens"], torch.full((4, 3), tiny.pad)], 1)
    a, b = model(**batch), model(**more)
    keep = batch["prev_output_tokens"].ne(tiny.pad)
    assert (a - b[:, : a.size(1)])[keep].abs().max() <= 1e-5
    ea, eb = encode(model, batch), encode(model, more)
    real = ~ea.padding_mask
    assert (ea.hidden - eb.hidden[:, : ea.hidden.size(1)])[real].abs().max() <= 1e-5


@torch.no_grad()
def test_text_only_sample_in_a_mixed_batch(model, tiny):
    batch = tiny.batch()
    enc = encode(model, batch)
    assert enc.padding_mask[1, :4].all() and not enc.padding_mask[0, :4].any()  # 4 patches masked
    mixed = model(**batch)[1]
    other_image = dict(batch, patch_images=batch["patch_images"].clone())
    other_image["patch_images"][1] = 5.0  # a text-only sample's image must not matter
    assert (model(**other_image)[1] - mixed).abs().max() <= 1e-5
    alone = model(batch["src_tokens"][1:2], batch["prev_output_tokens"][1:2])[0]  # no image at all
    keep = batch["prev_output_tokens"][1].ne(tiny.pad)
    assert (alone - mixed)[keep].abs().max() <= 1e-4


@torch.no_grad()
def test_sample_patch_num_and_shapes(model, tiny):
    batch = tiny.batch()
    enc = model.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"], sample_patch_num=3)
    assert enc.hidden.shape == (4, 3 + 9, 32) and enc.position_embeddings.shape == (4, 12, 32)
    assert enc.padding_mask.shape == (4, 12) and enc.padding_mask[1, :3].all()
    logits = model.decode(batch["prev_output_tokens"], enc)
    assert logits.shape == (4, 7, tiny.vocab) and torch.isfinite(logits).all()


def test_meta_build_then_reset_keeps_the_tie(tiny):
    with torch.device("meta"):
        model = OFAModel(tiny.config())
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens is model.encoder.embed_tokens
    assert model.encoder.embed_tokens.weight[tiny.pad].abs().sum() == 0
    assert model.decoder.image_position_idx[:3].tolist() == [0, 1, 2]
    assert torch.isfinite(model.eval()(**tiny.batch())).all()


def test_freeze_resnet_uses_running_stats(tiny):
    model = OFAModel(tiny.config(freeze_resnet=True)).train()
    bn = model.encoder.embed_images.bn1
    assert not bn.weight.requires_grad
    before = bn.running_mean.clone()
    model(**tiny.batch())
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("name,millions", [("ofa_tiny", 33.5), ("ofa_medium", 92.9), ("ofa_base", 182.2),
                                           ("ofa_large", 473.0), ("ofa_huge", 929.5)])
def test_preset_parameter_counts(name, millions):
    n = count_parameters(OFAConfig.from_preset(name, vocab_size=59457))
    assert abs(n / 1e6 - millions) / millions < 0.01


def test_presets_build_and_nano_is_small():
    assert set(PRESETS) >= {"ofa_nano", "ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"}
    assert count_parameters(OFAConfig.from_preset("ofa_nano", vocab_size=8000)) < 6e6
    with pytest.raises(ValueError, match="unknown OFAConfig keys"):
        OFAConfig.from_dict({"d_modl": 3})


def test_modules_import_without_training_stack():
    """Pure torch, and one-way: the config imports no model module."""
    code = ("import sys\nfor m in ('lightning', 'pytorch_lightning', 'hydra', 'webdataset'): sys.modules[m] = None\n"
            "import ofa.modules.config\n"
            "assert not [m for m in sys.modules if m.startswith('ofa.modules.') and m != 'ofa.modules.config']\n"
            "import ofa.modules.model, ofa.modules.generation")
    subprocess.run([sys.executable, "-c", code], check=True)
