"""GumbelVQGAN: shapes, row-major codes, sampled vs argmax encoding, gradients, pure-torch imports."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig, gumbel_softmax

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=8,
            embed_dim=8, n_embed=16)  # f2, a 1x1 shortcut each way, attention at 8x8


def tiny_model(seed: int = 0) -> GumbelVQGAN:
    torch.manual_seed(seed)
    return GumbelVQGAN(VQGANConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def model() -> GumbelVQGAN:
    return tiny_model()


def images(b: int = 2, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_config_defaults_are_gumbel_f8():
    cfg = VQGANConfig()
    assert (cfg.factor, cfg.n_embed, cfg.embed_dim, cfg.ch_mult) == (8, 8192, 256, (1, 1, 2, 4))
    assert VQGANConfig(**TINY).factor == 2 and VQGANConfig.from_dict({"ch_mult": [1, 2]}) == VQGANConfig(ch_mult=(1, 2))
    with pytest.raises(ValueError, match="unknown VQGANConfig keys: chmult"):
        VQGANConfig.from_dict({"chmult": [1]})
    with pytest.raises(ValueError, match="z_channels == embed_dim"):
        VQGANConfig(z_channels=16, embed_dim=8)
    with pytest.raises(ValueError, match=r"num_res_blocks 0 needs one width \(ch_mult all 1\), got ch_mult \[1, 2\]"):
        VQGANConfig(num_res_blocks=0, ch_mult=(1, 2))
    assert GumbelVQGAN(VQGANConfig(**{**TINY, "num_res_blocks": 0, "ch_mult": (1, 1)})).decode(
        torch.zeros(1, 4, 4, dtype=torch.long)).shape == (1, 3, 8, 8)  # one width: no blocks is valid


def test_encode_decode_shapes(model):
    x = images()
    codes = model.encode(x)
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < TINY["n_embed"]
    with torch.no_grad():
        out = model.decode(codes)
        assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
        assert torch.equal(model.decode(codes.view(2, 8, 8)), out)
        assert model.decode(torch.zeros(1, 8, 16, dtype=torch.long)).shape == (1, 3, 16, 32)  # a (B, h, w) grid
    with pytest.raises(ValueError, match="not a square grid"):
        model.decode(codes[:, :60])


def test_codes_are_row_major(model):
    """Flat index = row * w + col, both ways: encoding a 16x32 image (an 8x16 grid) and decoding a grid with one
    code set at (row 2, col 5)."""
    x = images(1, 16, 32)
    with torch.no_grad():
        argmax = model.logits(x).argmax(1)  # (1, 8, 16)
    codes = model.encode(x)
    assert codes.shape == (1, 128)
    for r in range(8):
        for c in range(16):
            assert codes[0, r * 16 + c] == argmax[0, r, c]
    grid = torch.zeros(1, 8, 8, dtype=torch.long)
    grid[0, 2, 5] = 3
    flat = torch.zeros(1, 64, dtype=torch.long)
    flat[0, 2 * 8 + 5] = 3
    with torch.no_grad():
        assert torch.equal(model.decode(flat), model.decode(grid))
        lookup = model.quantize.lookup(grid)  # (1, embed_dim, 8, 8)
    assert torch.equal(lookup[0, :, 2, 5], model.quantize.embed.weight[3])
    assert torch.equal(lookup[0, :, 5, 2], model.quantize.embed.weight[0])


def test_argmax_encode_is_deterministic(model):
    x = images()
    state = torch.get_rng_state()
    assert torch.equal(model.encode(x), model.encode(x))
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing


def test_sampled_encode_is_taming_gumbel_draw(model):
    """sample=True: taming's eval-mode `F.gumbel_softmax(logits, tau, dim=1, hard=True).argmax(1)`, same noise
    from the same global RNG state; with a generator, the noise comes from it instead."""
    x = images()
    with torch.no_grad():
        logits = model.logits(x)
    torch.manual_seed(7)
    expected = F.gumbel_softmax(logits, tau=model.cfg.temperature, dim=1, hard=True).argmax(1).flatten(1)
    torch.manual_seed(7)
    sampled = model.encode(x, sample=True)
    assert torch.equal(sampled, expected)
    assert not torch.equal(sampled, model.encode(x))  # the noise changes some codes
    state = torch.get_rng_state()
    a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    b = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_equals_torch(hard):
    logits = torch.randn(2, 16, 3, 4)
    torch.manual_seed(5)
    expected = F.gumbel_softmax(logits, tau=0.7, dim=1, hard=hard)
    torch.manual_seed(5)
    assert torch.equal(gumbel_softmax(logits, 0.7, hard), expected)


def test_forward_in_eval_mode_draws_like_sampled_encode(model):
    x = images()
    torch.manual_seed(11)
    with torch.no_grad():
        reconstruction, kl, codes = model(x)
    torch.manual_seed(11)
    assert torch.equal(codes, model.encode(x, sample=True))
    with torch.no_grad():
        assert torch.allclose(reconstruction, model.decode(codes), atol=1e-5)
    assert kl.shape == () and kl.item() > 0


def test_every_parameter_gets_a_gradient():
    model = tiny_model(seed=2).train()
    x = images()
    reconstruction, kl, codes = model(x, temperature=0.9)
    assert reconstruction.shape == x.shape and codes.shape == (2, 64)
    ((reconstruction - x).abs().mean() + kl * 1e6).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_modules_import_without_training_stack():
    code = ("import sys\n"
            "for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'webdataset'): sys.modules[m] = None\n"
            "import torch\nfrom ofa.modules.vqgan import GumbelVQGAN, VQGANConfig\n"
            "cfg = VQGANConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), z_channels=8, "
            "embed_dim=8, n_embed=4)\n"
            "assert GumbelVQGAN(cfg).encode(torch.zeros(1, 3, 4, 4)).shape == (1, 16)\n"
            "assert not [m for m in sys.modules if m.startswith(('ofa.tasks', 'ofa.datamodules', 'ofa.vqgan_io'))]")
    subprocess.run([sys.executable, "-c", code], check=True)
