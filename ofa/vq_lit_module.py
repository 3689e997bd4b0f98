"""`VQLitModule`: trains the Gumbel VQGAN image tokenizer (`ofa.modules.vqgan`, spec §7) as taming's
`GumbelVQ.training_step` does, plus an optional autoencoder warm-up (`AEWarmupConfig`), minus what does not pay
on CPU at 64x64 (experiments/README.md, "VQ image tokenizer on the synthetic world").

Generator loss: `l1_weight * |x - x'| + mse_weight * (x - x')^2` + the model's KL term to the uniform prior
(`vq.kl_weight`) + optionally `perceptual_weight` * a VGG16 feature distance (local weights only) + optionally
a PatchGAN hinge loss (`disc_weight`, from step `disc_start`, taming's adaptive weight). After the warm-up the
codes are hard Gumbel samples with straight-through gradients at a temperature annealed exponentially from
`temperature_start` to `temperature_end` (see `VQLossConfig`). AdamW, linear warmup, cosine decay; manual
optimisation (generator + discriminator), one global step per batch. Validation scores what OFA's code shards
will hold, `decode(encode(x))` with the deterministic `encode`: `val/psnr` (all groups; `val/<group>/psnr`
each), `val/codes_used`, `val/perplexity`, and a picture of originals over reconstructions
(`<image_dir>/step_<N>.png`, also to W&B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.image import PeakSignalNoiseRatio

from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig

PSNR_CAP = 100.0  # dB: identical images (MSE 0, PSNR inf) are logged as this, so logs and JSON stay finite
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class VQLossConfig:
    """What the generator (and the optional discriminator) minimise."""

    l1_weight: float = 1.0
    mse_weight: float = 1.0
    # Gumbel tau: high early, so the soft straight-through gradient reaches many codes (codebook use), low
    # late, so training's soft one-hot is the hard code the deterministic encode gives. null steps: the run.
    temperature_start: float = 1.0
    temperature_end: float = 0.0625
    temperature_steps: Optional[int] = None
    perceptual_weight: float = 0.0
    vgg16_path: Optional[str] = None  # torchvision vgg16 state dict (all of it or `features.*`); never downloaded
    disc_weight: float = 0.0  # 0: no discriminator
    disc_start: int = 0  # the GAN loss joins at this step (the discriminator trains from it too)
    disc_channels: int = 32
    disc_layers: int = 2


@dataclass
class AEWarmupConfig:
    """Train as a plain autoencoder first (the quantiser bypassed), then start the codebook from k-means of
    the encoder's outputs (Lancucki et al. 2020, "Robust training of vector quantized bottleneck models"):
    `proj` scores codes by distance (nearest centroid = argmax, with a median margin of `margin` logits) and
    `embed` holds the centroids, so the decoder sees almost what it was trained on. 0 steps: taming's
    (Gumbel from the first step), which collapses to a few codes in a few hundred steps here."""

    steps: int = 0
    fraction: Optional[float] = None  # of the run's steps, instead of `steps` (a longer run keeps the proportion)
    kmeans_batches: int = 64  # encoder outputs of the last this many warm-up batches
    kmeans_iters: int = 20
    margin: float = 10.0


@dataclass
class VQOptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio at the end of the run
    clip_norm: Optional[float] = 1.0
    disc_lr: float = 2e-4


# ---- metrics ---------------------------------------------------------------------------------------
def codebook_usage(counts: Tensor) -> tuple[int, float]:
    """(codes used, perplexity = exp(entropy of the code frequencies)) of a (n_embed,) count vector."""
    total = counts.sum()
    if total == 0:
        return 0, 0.0
    p = counts[counts > 0].double() / total
    return int((counts > 0).sum()), float(torch.exp(-(p * p.log()).sum()))


# ---- codebook start ---------------------------------------------------------------------------------
def kmeans(points: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """(k, D) centroids of (N, D) points (Lloyd's algorithm from random points; an empty cluster restarts at a
    random point). With N < k, the starting points repeat (plus tiny noise)."""
    n = points.shape[0]
    start = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    centroids = points[start].clone()
    if n < k:
        centroids += 1e-3 * points.std() * torch.randn(centroids.shape, generator=generator)
    for _ in range(iters):
        assign = nearest(points, centroids)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        empty = counts == 0
        centroids = torch.where(empty[:, None], points[torch.randint(n, (k,), generator=generator)],
                                sums / counts.clamp_min(1)[:, None])
    return centroids


def nearest(points: Tensor, centroids: Tensor, chunk: int = 65536) -> Tensor:
    """Index of the nearest centroid of each point."""
    c2 = centroids.pow(2).sum(1)
    return torch.cat([(c2[None] - 2 * p @ centroids.T).argmin(1) for p in points.split(chunk)])


@torch.no_grad()
def set_nearest_codebook(model: GumbelVQGAN, centroids: Tensor, margin: float, points: Tensor) -> None:
    """`embed` = centroids; `proj` = logits `s * (2 c.z - |c|^2)` (argmax = nearest centroid), with the scale `s`
    giving the median point a gap of `margin` logits between its two best codes (Gumbel noise then rarely
    changes a code)."""
    c2 = centroids.pow(2).sum(1)
    dist = c2[None] - 2 * points[:8192] @ centroids.T  # (N, K): squared distance minus |z|^2
    best = dist.topk(2, dim=1, largest=False).values
    scale = margin / (best[:, 1] - best[:, 0]).median().clamp_min(1e-8)
    model.quantize.embed.weight.copy_(centroids)
    model.quantize.proj.weight.copy_((2 * scale * centroids)[:, :, None, None])
    model.quantize.proj.bias.copy_(-scale * c2)


def capped_psnr(value: Tensor) -> float:
    return min(float(value), PSNR_CAP)


def reconstruction_grid(originals: Tensor, reconstructions: Tensor, path: Path) -> Path:
    """PNG of originals (top row) over reconstructions (bottom row); images (N, 3, H, W) in [-1, 1]."""
    from PIL import Image

    pair = torch.stack([originals, reconstructions]).clamp(-1, 1).add(1).mul(127.5).round().byte()  # (2,N,3,H,W)
    rows, n, _, h, w = pair.shape
    grid = pair.permute(0, 3, 1, 4, 2).reshape(rows * h, n * w, 3)  # (2H, N*W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.cpu().numpy()).save(path)
    return path


# ---- optional losses -------------------------------------------------------------------------------
class VGGPerceptual(nn.Module):
    """Mean squared distance of channel-normalised VGG16 features (relu1_2 ... relu5_3): LPIPS without its
    learned channel weights (which are not available offline). Frozen."""

    LAYERS = (3, 8, 15, 22, 29)

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        from torchvision.models import vgg16

        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        features = vgg16(weights=None).features
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                  if not k.startswith("classifier.")})
        self.features = features[: self.LAYERS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptual:
        return super().train(False)  # always eval

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = torch.cat([x, y]).add(1).div(2).sub(self.mean).div(self.std)  # (2B, 3, H, W)
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.LAYERS:
                fx, fy = F.normalize(h, dim=1).chunk(2)
                loss = loss + (fx - fy).pow(2).sum(1).mean()
        return loss


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN (taming's `NLayerDiscriminator`): 4x4 convolutions, stride 2 then 1, a logit per patch."""

    def __init__(self, channels: int = 32, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            mods += [nn.Conv2d(ch, out, 4, 2 if i < layers else 1, 1, bias=False), nn.BatchNorm2d(out),
                     nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, h, w)


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


# ---- the module ------------------------------------------------------------------------------------
class VQLitModule(pl.LightningModule):
    """The Gumbel VQGAN, its losses and optimisers, and the validation metrics (module docstring)."""

    def __init__(self, model_cfg: VQGANConfig, loss: VQLossConfig | None = None, optim: VQOptimConfig | None = None,
                 warmup: AEWarmupConfig | None = None, log_images: int = 8, image_dir: str | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False  # generator and discriminator: two optimisers
        self.model_cfg, self.loss_cfg, self.optim_cfg = model_cfg, loss or VQLossConfig(), optim or VQOptimConfig()
        self.warmup_cfg = warmup or AEWarmupConfig()
        self._latents: list[Tensor] = []  # encoder outputs of the last warm-up batches, for k-means
        self.log_images, self.image_dir = log_images, image_dir
        self.last_picture: Path | None = None
        self.model = GumbelVQGAN(model_cfg)
        self.perceptual = VGGPerceptual(self.loss_cfg.vgg16_path) if self.loss_cfg.perceptual_weight > 0 else None
        cfg = self.loss_cfg
        self.discriminator = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers) if cfg.disc_weight > 0 else None
        self.validated_at_step = -1
        self._reset_val()

    # ---- schedules ---------------------------------------------------------------------------------
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1

    def ae_steps(self) -> int:
        """Steps of the autoencoder warm-up (`warmup.fraction` of the run, else `warmup.steps`)."""
        cfg = self.warmup_cfg
        return round(cfg.fraction * self.total_steps()) if cfg.fraction is not None else cfg.steps

    def temperature(self, step: int) -> float:
        """Exponential from `temperature_start` to `temperature_end` over `temperature_steps` (the run after
        the autoencoder warm-up)."""
        cfg, start = self.loss_cfg, self.ae_steps()
        steps = cfg.temperature_steps or self.total_steps() - start
        frac = min(1.0, max(0, step - start) / max(1, steps))
        return cfg.temperature_start * (cfg.temperature_end / cfg.temperature_start) ** frac

    def lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to `min_lr_ratio`."""
        cfg, total = self.optim_cfg, self.total_steps()
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay)
        sched = {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor), "interval": "step"}
        if self.discriminator is None:
            return [opt], [sched]
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
        return [opt, opt_d], [sched]

    def on_fit_start(self) -> None:
        # tiny softmax values at low temperatures are denormal floats, which make CPU kernels ~3x slower
        torch.set_flush_denormal(True)

    # ---- training ----------------------------------------------------------------------------------
    def gan_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.loss_cfg.disc_start

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        opt = optimizers[0] if isinstance(optimizers, list) else optimizers
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        step, warmup = self.global_step, self.ae_steps()
        if step == warmup and warmup > 0:
            self.init_codebook(opt, x)
        tau = self.temperature(step)
        if step < warmup:
            rec, kl = self.autoencode(x, keep=step >= warmup - self.warmup_cfg.kmeans_batches), x.new_zeros(())
        else:
            rec, kl, _ = self.model(x, tau)
        terms = self.generator_terms(x, rec, kl)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.optim_cfg.clip_norm:
            self.clip_gradients(opt, gradient_clip_val=self.optim_cfg.clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.lr_schedulers().step()
        if self.gan_active():
            terms["disc"] = self.discriminator_step(optimizers[1], x, rec.detach())
        log = {f"train/{k}": v.detach() for k, v in terms.items()}
        log |= {"train/loss": loss.detach(), "train/temperature": tau, "train/lr": opt.param_groups[0]["lr"]}
        self.log_dict(log, on_step=True, on_epoch=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss.detach()

    def autoencode(self, x: Tensor, keep: bool) -> Tensor:
        """The warm-up's pass, quantiser bypassed; `keep`: remember the encoder outputs for k-means."""
        m = self.model
        z = m.quant_conv(m.encoder(x))  # (B, embed_dim, h, w)
        if keep:
            self._latents.append(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).cpu())
        return m.decoder(m.post_quant_conv(z))

    @torch.no_grad()
    def init_codebook(self, opt: Any, x: Tensor) -> None:
        """End of the warm-up: codebook = k-means of the kept encoder outputs (rank 0's under DDP), `proj` =
        the nearest-centroid rule; the quantiser's optimiser state starts afresh."""
        m, cfg = self.model, self.warmup_cfg
        points = torch.cat([*self._latents, m.quant_conv(m.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2).cpu()])
        self._latents = []
        generator = torch.Generator().manual_seed(int(self.global_step))
        centroids = kmeans(points, self.model_cfg.n_embed, cfg.kmeans_iters, generator).to(x.device)
        centroids = self.trainer.strategy.broadcast(centroids, 0)
        set_nearest_codebook(m, centroids, cfg.margin, points.to(x.device))
        for p in m.quantize.parameters():
            opt.optimizer.state.pop(p, None)

    def generator_terms(self, x: Tensor, rec: Tensor, kl: Tensor) -> dict[str, Tensor]:
        cfg = self.loss_cfg
        error = rec - x
        terms = {"l1": cfg.l1_weight * error.abs().mean(), "mse": cfg.mse_weight * error.pow(2).mean(), "kl": kl}
        if self.perceptual is not None:
            terms["perceptual"] = cfg.perceptual_weight * self.perceptual(rec, x)
        if self.gan_active():
            g_loss = -self.discriminator(rec).mean()
            nll = sum(terms.values())
            terms["gan"] = cfg.disc_weight * self.adaptive_weight(nll, g_loss) * g_loss
        return terms

    def adaptive_weight(self, nll: Tensor, g_loss: Tensor) -> Tensor:
        """taming's `calculate_adaptive_weight`: balances the gradients of both losses at the last layer."""
        last = self.model.decoder.conv_out.weight
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def discriminator_step(self, opt_d: Any, real: Tensor, fake: Tensor) -> Tensor:
        d_loss = hinge_d_loss(self.discriminator(real), self.discriminator(fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.optimizer.step()  # the raw optimiser: one training step stays one global step
        return d_loss.detach()

    # ---- validation --------------------------------------------------------------------------------
    def _reset_val(self) -> None:
        self._psnr: dict[str, PeakSignalNoiseRatio] = {}
        self._counts = torch.zeros(self.model_cfg.n_embed, dtype=torch.long)
        self._shown: dict[str, tuple[Tensor, Tensor]] = {}

    def on_validation_epoch_start(self) -> None:
        self._reset_val()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, group = batch["image"], batch["group"]
        codes = self.model.encode(x)  # (B, h*w): the deterministic codes OFA's code shards hold
        rec = self.model.decode(codes).clamp(-1, 1)  # (B, 3, H, W)
        for name in ("all", group):
            if name not in self._psnr:
                self._psnr[name] = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(x.device)
            self._psnr[name].update(rec.add(1).div(2), x.add(1).div(2))
        self._counts += torch.bincount(codes.flatten().cpu(), minlength=self.model_cfg.n_embed)
        if group not in self._shown and self.log_images > 0:
            self._shown[group] = (x[: self.log_images].cpu(), rec[: self.log_images].cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._psnr:
            return
        used, perplexity = codebook_usage(self._counts)
        metrics = {"val/psnr": capped_psnr(self._psnr["all"].compute()), "val/codes_used": float(used),
                   "val/perplexity": perplexity}
        metrics |= {f"val/{g}/psnr": capped_psnr(m.compute()) for g, m in self._psnr.items() if g != "all"}
        self.log_dict(metrics, sync_dist=False)
        self.validated_at_step = self.global_step
        if self._shown and self.image_dir and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.save_reconstructions()

    def save_reconstructions(self) -> Path:
        """The validation picture: per group, originals over reconstructions, side by side."""
        originals = torch.cat([x for x, _ in self._shown.values()])
        recs = torch.cat([r for _, r in self._shown.values()])
        path = reconstruction_grid(originals, recs, Path(self.image_dir) / f"step_{self.global_step:06d}.png")
        self.last_picture = path
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                caption = f"top: originals, bottom: decode(encode(x)); groups {', '.join(self._shown)}"
                logger.log_image("val/reconstructions", [str(path)], step=self.global_step, caption=[caption])
        return path
