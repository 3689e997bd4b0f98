"""OFA's image tokenizer: taming-transformers' Gumbel VQGAN (`taming.models.vqgan.GumbelVQ`), spec §7.

Images (B, 3, H, W) in [-1, 1] become `(H/f) * (W/f)` codes in [0, n_embed), flattened row-major
(code index = row * w + col, as OFA's `indices.view(B, -1)`); codes decode back to pixels. Parameter names
equal taming's (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`, `quantize.proj`, `quantize.embed`),
so a taming state dict, less its `loss.*` keys, loads unrenamed (`ofa.vqgan_io.load_vqgan`).

Caveat (spec §7): taming's `GumbelQuantize.forward` adds Gumbel noise even in eval mode, so OFA's codes are a
SAMPLE drawn with torch's global RNG. `encode(sample=True)` reproduces that draw exactly (same noise from the
same RNG state, or from `generator`); `encode(sample=False)`, the default, is the deterministic
`proj(z).argmax(1)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ofa.modules.vqgan_blocks import Decoder, Encoder


def f8_temperature_schedule() -> dict:
    """The Gumbel temperature schedule of taming's released vqgan_gumbel_f8 (`temperature_scheduler_config`).
    taming applies it only in `training_step`; evaluation keeps `temp_init` = 1.0."""
    return {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9,
                       "lr_min": 1.0e-06}}


@dataclass
class VQGANConfig:
    """taming's `ddconfig` fields plus the quantizer's; defaults = the Gumbel f8 / 8192 model OFA uses.

    The defaults are those of taming's released `vqgan_gumbel_f8` `model.yaml` (as copied in public repos; the
    file ships with the checkpoint, not with the taming package, and OFA's own `vqgan/model.yaml` inside
    `image_gen_large_best.zip` was not available to check). `tests/fixtures/taming_gumbel/f8_keys.json`, made
    with taming's code at these values, pins every parameter name and shape. `temperature` is the Gumbel tau
    of `encode(sample=True)`: taming's `temp_init`, 1.0, which is what OFA's encoding used.
    """

    double_z: bool = False
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    dropout: float = 0.0
    n_embed: int = 8192
    embed_dim: int = 256
    kl_weight: float = 1e-8
    temperature: float = 1.0
    temperature_scheduler_config: dict | None = field(default_factory=f8_temperature_schedule)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if self.num_res_blocks < 1 and set(self.ch_mult) != {1}:  # the encoder's blocks change the width
            raise ValueError(f"a VQGAN with num_res_blocks {self.num_res_blocks} needs one width "
                             f"(ch_mult all 1), got ch_mult {list(self.ch_mult)}")
        # taming's GumbelVQ feeds quant_conv's output (embed_dim channels) to quantize.proj, which it builds
        # for z_channels inputs, and builds quant_conv for z_channels inputs: other settings fail there too
        if self.double_z or self.z_channels != self.embed_dim:
            raise ValueError(f"a Gumbel VQGAN needs double_z False and z_channels == embed_dim, got double_z "
                             f"{self.double_z}, z_channels {self.z_channels}, embed_dim {self.embed_dim}")

    @property
    def factor(self) -> int:
        """Downsampling factor: each code covers factor x factor pixels."""
        return 2 ** (len(self.ch_mult) - 1)

    def ddconfig(self) -> dict:
        """The encoder/decoder fields, as taming's `ddconfig` (lists, for YAML)."""
        names = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
                 "attn_resolutions", "dropout")
        values = {n: getattr(self, n) for n in names}
        return {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict) -> VQGANConfig:
        """Build from a flat dict, refusing unknown keys by name."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VQGANConfig keys: {', '.join(unknown)}")
        return cls(**values)


def gumbel_softmax(logits: Tensor, tau: float, hard: bool, generator: torch.Generator | None = None) -> Tensor:
    """`F.gumbel_softmax(logits, tau, hard, dim=1)`, drawing its noise the same way from the same RNG (torch's
    global one, or `generator`): same RNG state, same result. `hard`: one-hot forward, soft gradient."""
    noise = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format)
    noise = -noise.exponential_(generator=generator).log()  # Gumbel(0, 1)
    soft = ((logits + noise) / tau).softmax(1)
    if not hard:
        return soft
    index = soft.argmax(1, keepdim=True)  # the first maximum, as F.gumbel_softmax's max(dim)
    one_hot = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(1, index, 1.0)
    return one_hot - soft.detach() + soft


class GumbelQuantizer(nn.Module):
    """Logits over the codebook (`proj`, a 1x1 convolution) and the codebook itself (`embed`)."""

    def __init__(self, z_channels: int, n_embed: int, embed_dim: int, straight_through: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, kernel_size=1)
        self.embed = nn.Embedding(n_embed, embed_dim)
        self.straight_through = straight_through  # taming's default: hard one-hot codes in training too

    def lookup(self, codes: Tensor) -> Tensor:
        """Codebook vectors of a code grid (B, h, w), channels first: (B, embed_dim, h, w)."""
        return self.embed(codes).permute(0, 3, 1, 2)


class GumbelVQGAN(nn.Module):
    """Encoder -> quant_conv -> Gumbel quantizer -> codebook -> post_quant_conv -> decoder (taming's GumbelVQ)."""

    def __init__(self, cfg: VQGANConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = GumbelQuantizer(cfg.z_channels, cfg.n_embed, cfg.embed_dim)  # before quant_conv, as taming
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, kernel_size=1)

    def logits(self, images: Tensor) -> Tensor:
        """Codebook logits (B, n_embed, H/f, W/f) of images (B, 3, H, W) in [-1, 1]."""
        return self.quantize.proj(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Codes (B, h*w), row-major, of images (B, 3, H, W) in [-1, 1] with H, W multiples of `cfg.factor`.

        sample=True: OFA's codes, taming's eval-mode draw (Gumbel noise at tau `cfg.temperature`, then argmax);
        sample=False: the most likely code at each position, `proj(z).argmax(1)`.
        """
        logits = self.logits(images)  # (B, n_embed, h, w)
        if sample:
            codes = gumbel_softmax(logits, self.cfg.temperature, hard=True, generator=generator).argmax(1)
        else:
            codes = logits.argmax(1)  # (B, h, w)
        return codes.flatten(1)  # (B, h*w)

    def decode(self, codes: Tensor) -> Tensor:
        """Pixels (B, 3, h*f, w*f) of codes (B, h, w) or (B, h*w) on a square grid, as taming's `decode_code`.
        Not clamped: the caller clamps to [-1, 1]."""
        if codes.dim() == 2:
            side = round(codes.shape[1] ** 0.5)
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes per image are not a square grid: pass (B, h, w)")
            codes = codes.view(codes.shape[0], side, side)  # (B, h, w)
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    def forward(self, images: Tensor, temperature: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass, as taming's `GumbelVQ.forward`: (reconstruction (B,3,H,W), KL loss (), codes (B, h*w)).

        Codes are drawn by Gumbel-softmax at `temperature` (default `cfg.temperature`; taming anneals it with
        `temperature_scheduler_config`), one-hot with straight-through gradients in training (taming's
        `straight_through=True`), always one-hot in eval mode. The KL term to the uniform prior is weighted by
        `cfg.kl_weight`.
        """
        tau = self.cfg.temperature if temperature is None else temperature
        logits = self.logits(images)  # (B, n_embed, h, w)
        hard = self.quantize.straight_through if self.training else True
        one_hot = gumbel_softmax(logits, tau, hard)  # (B, n_embed, h, w), soft if not hard
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.quantize.embed.weight)  # (B, embed_dim, h, w)
        qy = logits.softmax(1)
        kl = self.cfg.kl_weight * (qy * torch.log(qy * self.cfg.n_embed + 1e-10)).sum(1).mean()
        reconstruction = self.decoder(self.post_quant_conv(z_q))  # (B, 3, H, W)
        return reconstruction, kl, one_hot.argmax(1).flatten(1)
