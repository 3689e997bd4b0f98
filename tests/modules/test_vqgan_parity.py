"""Parity with taming-transformers' GumbelVQ on `tests/fixtures/taming_gumbel/` (reference outputs made by
`experiments/taming_parity/make_fixture.py`; taming is not needed here).

The fixture model is small (ch 32, ch_mult [2,1,1], attention at 8x8, 64 codes, f4); `f8_keys.json` pins the
parameter names and shapes of the full f8 / 8192 model.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig
from ofa.vqgan_io import load_vqgan

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "taming_gumbel"


@pytest.fixture(scope="module")
def ref() -> dict:
    with safe_open(str(FIXTURE / "reference.safetensors"), "pt") as f:
        return {"settings": json.loads(f.metadata()["settings"]), **{k: f.get_tensor(k) for k in f.keys()}}


@pytest.fixture(scope="module")
def model() -> GumbelVQGAN:
    return load_vqgan(FIXTURE)


def test_sampled_codes_equal_taming(model, ref):
    """OFA's codes are taming's eval-mode Gumbel sample: same global seed, same codes."""
    assert model.cfg.temperature == ref["settings"]["temperature"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref["settings"]["sample_seed"])
        codes = model.encode(ref["images"], sample=True)
    assert torch.equal(codes, ref["sampled_codes"])
    assert not torch.equal(codes, ref["argmax_codes"])  # the fixture tells the two apart


def test_argmax_codes_equal_taming(model, ref):
    assert torch.equal(model.encode(ref["images"]), ref["argmax_codes"])


@pytest.mark.parametrize("name", ["random", "sampled"])
def test_decode_equals_taming_decode_code(model, ref, name):
    with torch.no_grad():
        pixels = model.decode(ref[f"{name}_codes"])
    assert (pixels - ref[f"{name}_pixels"]).abs().max() < 1e-4


def test_training_forward_equals_taming(ref):
    """Train mode: straight-through Gumbel one-hot (same draw), einsum with the codebook, KL to the prior."""
    model = load_vqgan(FIXTURE).train()  # its own copy: the shared one stays in eval mode
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(ref["settings"]["train_seed"])
        reconstruction, kl, _ = model(ref["images"], temperature=1.0)
    assert (reconstruction - ref["train_reconstruction"]).abs().max() < 1e-4
    assert torch.allclose(kl.reshape(1), ref["train_kl"], rtol=1e-4, atol=0)


def test_default_config_has_taming_f8_keys_and_shapes():
    expected = json.loads((FIXTURE / "f8_keys.json").read_text())
    with torch.device("meta"):
        model = GumbelVQGAN(VQGANConfig())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(expected.items())
