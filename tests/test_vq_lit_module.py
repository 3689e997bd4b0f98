"""`VQLitModule`: training lowers the loss, the validation metrics (PSNR, codebook use) are right on hand-made
cases, and the saved bundle loads with `load_vqgan` to the same model."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ofa.modules.vqgan import VQGANConfig
from ofa.vq_lit_module import PSNR_CAP, VQLitModule, VQLossConfig, VQOptimConfig, codebook_usage
from ofa.vqgan_io import load_vqgan, save_vqgan

TINY = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16, z_channels=32,
                   embed_dim=32, n_embed=16, temperature_scheduler_config=None)


def flat_images(n: int = 4, size: int = 16) -> Tensor:
    """Flat colours with a square in one corner: (n, 3, size, size) in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1).expand(n, 3, size, size).clone()
    x[:, :, : size // 2, : size // 2] = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    return x


def loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)  # each item is a whole batch


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def fit(module: VQLitModule, steps: int) -> list[float]:
    torch.manual_seed(0)
    batch = {"image": flat_images(), "group": "train"}
    recorder = LossRecorder()
    run = trainer(max_steps=steps, limit_val_batches=0, callbacks=[recorder])
    run.fit(module, train_dataloaders=loader([batch] * steps))
    return recorder.losses


def test_a_few_steps_lower_the_loss() -> None:
    module = VQLitModule(TINY, VQLossConfig(), VQOptimConfig(lr=3e-3, warmup_steps=1))
    losses = fit(module, 24)
    assert len(losses) == 24 and module.global_step == 24
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_the_discriminator_trains_without_extra_global_steps() -> None:
    module = VQLitModule(TINY, VQLossConfig(disc_weight=0.5, disc_start=2), VQOptimConfig(warmup_steps=1))
    before = [p.detach().clone() for p in module.discriminator.parameters()]
    fit(module, 4)
    assert module.global_step == 4  # the discriminator's updates do not count as steps
    assert any(not torch.equal(a, b) for a, b in zip(before, module.discriminator.parameters()))


def test_temperature_and_lr_schedules() -> None:
    module = VQLitModule(TINY, VQLossConfig(temperature_start=1.0, temperature_end=0.01, temperature_steps=100),
                         VQOptimConfig(warmup_steps=10, min_lr_ratio=0.1))
    assert module.temperature(0) == 1.0 and module.temperature(50) == pytest.approx(0.1)
    assert module.temperature(100) == pytest.approx(0.01) == module.temperature(500)
    assert module.lr_factor(0) == pytest.approx(0.1) and module.lr_factor(9) == pytest.approx(1.0)


def test_codebook_usage() -> None:
    used, perplexity = codebook_usage(torch.tensor([3, 0, 1, 0]))
    assert used == 2 and perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert codebook_usage(torch.tensor([5, 5, 5, 5])) == (4, pytest.approx(4.0))
    assert codebook_usage(torch.zeros(4, dtype=torch.long)) == (0, 0.0)


class FixedCodec(nn.Module):
    """A stand-in model: the codes are the batch's first pixel value as an index, the decoding adds `offset`."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset, self.images = offset, None

    def encode(self, images: Tensor) -> Tensor:
        self.images = images
        return torch.arange(4).repeat(images.shape[0], 1)  # (B, 4): codes 0..3 at every image

    def decode(self, codes: Tensor) -> Tensor:
        return self.images + self.offset


def validate(offset: float) -> dict[str, float]:
    module = VQLitModule(TINY, log_images=0)
    module.model = FixedCodec(offset)
    x = torch.zeros(2, 3, 16, 16)
    batches = [{"image": x, "group": "a"}, {"image": x, "group": "b"}]
    t = trainer()
    t.validate(module, dataloaders=loader(batches), verbose=False)
    return {k: float(v) for k, v in t.callback_metrics.items()}


def test_psnr_and_usage_on_hand_made_reconstructions() -> None:
    exact = validate(0.0)
    assert exact["val/psnr"] == PSNR_CAP == exact["val/a/psnr"]  # identical images: inf, logged as the cap
    off = validate(0.2)  # 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, 20 dB
    assert off["val/psnr"] == pytest.approx(20.0, abs=1e-4) and off["val/b/psnr"] == pytest.approx(20.0, abs=1e-4)
    assert off["val/codes_used"] == 4 and off["val/perplexity"] == pytest.approx(4.0)


def test_saved_bundle_loads_to_the_same_model(tmp_path: Path) -> None:
    module = VQLitModule(TINY, VQLossConfig(), VQOptimConfig(warmup_steps=1))
    fit(module, 2)
    model = module.model.eval()
    save_vqgan(model, TINY, tmp_path / "vq")
    loaded = load_vqgan(tmp_path / "vq")
    x = flat_images()
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    with torch.no_grad():
        assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_reconstruction_picture(tmp_path: Path) -> None:
    from PIL import Image

    from ofa.vq_lit_module import reconstruction_grid

    x = flat_images(3)
    path = reconstruction_grid(x, -x, tmp_path / "grid.png")
    image = Image.open(path)
    assert image.size == (3 * 16, 2 * 16)
    top, bottom = image.getpixel((15, 15)), image.getpixel((15, 31))
    assert all(abs(a + b - 255) <= 1 for a, b in zip(top, bottom))  # x and -x: mirrored around grey


def test_kmeans_finds_separated_clusters_and_the_codebook_picks_the_nearest() -> None:
    from ofa.vq_lit_module import kmeans, nearest, set_nearest_codebook

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(32)[:4] * 10  # 4 clusters in 32 dims
    points = (centres[:, None] + 0.1 * torch.randn(4, 50, 32, generator=g)).flatten(0, 1)
    found = kmeans(points, 4, 10, g)
    assert torch.cdist(found, centres).min(1).values.max() < 0.5
    model = VQLitModule(TINY).model
    codebook = kmeans(points, TINY.n_embed, 10, g)  # 16 codes
    set_nearest_codebook(model, codebook, 10.0, points)
    z = points.view(4, 50, 32)[:, :4].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)  # a (1, 32, 4, 4) latent grid
    logits = model.quantize.proj(z)  # (1, 16, 4, 4)
    assert torch.equal(logits.argmax(1).flatten(), nearest(z.permute(0, 2, 3, 1).reshape(-1, 32), codebook))
    assert torch.equal(model.quantize.embed.weight, codebook)


def test_autoencoder_warmup_then_codebook_from_kmeans() -> None:
    from ofa.vq_lit_module import AEWarmupConfig

    module = VQLitModule(TINY, VQLossConfig(), VQOptimConfig(warmup_steps=1),
                         AEWarmupConfig(steps=4, kmeans_batches=2, kmeans_iters=5))
    before = module.model.quantize.embed.weight.detach().clone()
    fit(module, 6)
    embed = module.model.quantize.embed.weight
    assert not torch.equal(before, embed) and module._latents == []
    x = flat_images()
    codes = module.model.encode(x)  # the codes the kept latents' clusters give: several are used
    assert codes.unique().numel() >= 2
    assert module.ae_steps() == 4 and module.temperature(4) == module.loss_cfg.temperature_start  # then annealing
