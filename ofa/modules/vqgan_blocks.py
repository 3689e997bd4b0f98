"""The convolutional encoder and decoder of taming-transformers' VQGAN (`taming.modules.diffusionmodules.model`).

Our own implementation of the same architecture; module names equal taming's, so its state dicts load
unrenamed: `conv_in`, `down.{i}.block.{j}` / `down.{i}.attn.{j}` / `down.{i}.downsample`, `mid.{block_1,attn_1,
block_2}`, `up.{i}.block.{j}` / `up.{i}.attn.{j}` / `up.{i}.upsample`, `norm_out`, `conv_out`. Level i of both
runs at `resolution / 2**i` and has `ch * ch_mult[i]` channels; a level whose resolution is listed in
`attn_resolutions` follows each residual block with a self-attention block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from ofa.modules.vqgan import VQGANConfig


def group_norm(channels: int) -> nn.GroupNorm:
    """taming's `Normalize`: 32 groups, eps 1e-6 (so every width is a multiple of 32)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 convolutions for q, k, v and the output)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, kernel_size=1)
        self.k = nn.Conv2d(ch, ch, kernel_size=1)
        self.v = nn.Conv2d(ch, ch, kernel_size=1)
        self.proj_out = nn.Conv2d(ch, ch, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))  # (B,1,HW,C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v: (B, 1, HW, C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after zero padding on the right and bottom only (taming's asymmetric pad)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = conv3x3(ch, ch, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = conv3x3(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention where the level
    has it; the caller runs the resampling after it (`downsample` in the encoder, `upsample` in the decoder,
    None on the last level)."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attn: bool, dropout: float,
                 downsample: nn.Module | None = None, upsample: nn.Module | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_ch if j == 0 else out_ch, out_ch, dropout) for j in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(n_blocks if attn else 0))
        self.downsample = downsample
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class MidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution."""

    def __init__(self, ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels, H/f, W/f) with f = 2**(len(ch_mult) - 1)."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = conv3x3(cfg.in_channels, cfg.ch)
        self.down = nn.ModuleList()
        in_ch, res = cfg.ch, cfg.resolution
        for i, width in enumerate(widths):
            down = Downsample(width) if i != len(widths) - 1 else None
            self.down.append(Level(in_ch, width, cfg.num_res_blocks, res in cfg.attn_resolutions, cfg.dropout, down))
            res //= 2
            in_ch = width
        self.mid = MidBlock(in_ch, cfg.dropout)
        self.norm_out = group_norm(in_ch)
        self.conv_out = conv3x3(in_ch, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)
            if level.downsample is not None:
                h = level.downsample(h)  # (B, C, H/2, W/2)
        h = self.mid(h)  # (B, C, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, h*f, w*f); `up[i]` is level i (the list is in encoder order and is
    run from the lowest resolution up); each level has `num_res_blocks + 1` blocks."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        res = cfg.resolution // cfg.factor
        in_ch = widths[-1]
        self.conv_in = conv3x3(cfg.z_channels, in_ch)
        self.mid = MidBlock(in_ch, cfg.dropout)
        levels = []
        for i in reversed(range(len(widths))):
            up = Upsample(widths[i]) if i != 0 else None
            attn = res in cfg.attn_resolutions
            levels.insert(0, Level(in_ch, widths[i], cfg.num_res_blocks + 1, attn, cfg.dropout, upsample=up))
            res *= 2
            in_ch = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(in_ch)
        self.conv_out = conv3x3(in_ch, cfg.out_ch)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, C, h, w)
        for level in reversed(self.up):
            h = level(h)
            if level.upsample is not None:
                h = level.upsample(h)  # (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_ch, H, W)
