"""OFA's image backbone: ResNet v1.5 stages 1-3 (Bottleneck blocks), stride 16, 1024 channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of `drop_path` (no parameters)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and is never trained."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, relu: bool = False,
            residual: Tensor | None = None) -> Tensor:
    """`bn(conv(x)) (+ residual) (.relu())` with running statistics, as one convolution (scaled weights,
    shifted bias).

    On the CPU with oneDNN, the ReLU and the residual add run inside the convolution (oneDNN post-ops, the
    kernels `torch.compile` uses for CPU inference) instead of as separate passes over the activations:
    ~10% of the inference ResNet's time for ofa_tiny at 256 px (experiments/README.md, issue 12).
    """
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C,)
    weight, bias = conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale
    if _fused_cpu_conv(x):
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        unary = "relu" if relu else "none"
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [None], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, *args, "add", None,
                                                               unary, [None], "")
    out = F.conv2d(x, weight, bias, conv.stride, conv.padding)
    if residual is not None:
        out += residual
    return out.relu_() if relu else out


def _fused_cpu_conv(x: Tensor) -> bool:
    """oneDNN's fused convolution applies: a float32 CPU tensor, a build with oneDNN and the fused op."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and FUSED_CONV)


FUSED_CONV = hasattr(torch.ops.mkldnn, "_convolution_pointwise")  # tests switch it off to compare


class Bottleneck(nn.Module):
    """1x1 -> 3x3(stride) -> 1x1 (x4 channels), residual with drop path."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path_rate: float = 0.0, norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        out += identity  # in place: batch norm's backward needs its input, not its output
        return self.relu(out)

    def forward_inference(self, x: Tensor) -> Tensor:
        """`forward` without autograd, batch norm on running statistics folded into the convolutions."""
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        out = conv_bn(self.conv1, self.bn1, x, relu=True)
        out = conv_bn(self.conv2, self.bn2, out, relu=True)
        return conv_bn(self.conv3, self.bn3, out, relu=True, residual=identity)


class ResNet(nn.Module):
    """conv1/bn1/maxpool + layer1..3; `forward` maps (B,3,H,W) to (B,1024,H/16,W/16).

    On CPU the activations are channels-last (oneDNN's native layout: no reorder around each convolution),
    with autograd too: the training step of ofa_tiny at 256 px is ~1.2x faster (experiments/README.md,
    "Channels-last training, generation without fresh buffers"). Without autograd and with running
    statistics, `forward_inference` runs (batch norm folded into the convolutions as well: ~1.4x). The
    parameters keep the default layout, so state dicts and checkpoints are unchanged; the output is a
    channels-last tensor. `channels_last = False` gives the contiguous layout (the reference's summation
    order).
    """

    channels_last = True  # CPU activations; an instance attribute overrides it (tests, comparisons)

    def __init__(self, layers: list[int], drop_path_rate: float = 0.0, frozen_bn: bool = False) -> None:
        super().__init__()
        self.norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self.norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, drop_path_rate)
        self.layer2 = self._make_layer(128, layers[1], 2, drop_path_rate)
        self.layer3 = self._make_layer(256, layers[2], 2, drop_path_rate)
        self.reset_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int, drop_path_rate: float) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       self.norm(out))
        mods = [Bottleneck(self.inplanes, planes, stride, downsample, norm=self.norm)]
        self.inplanes = out
        rates = torch.linspace(0, drop_path_rate, blocks, device="cpu").tolist()  # block 0 gets none
        mods += [Bottleneck(out, planes, drop_path_rate=rates[i], norm=self.norm) for i in range(1, blocks)]
        return nn.Sequential(*mods)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._inference():
            return self.forward_inference(x)
        if x.device.type == "cpu" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # every activation follows the input's layout
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)

    def _inference(self) -> bool:
        """No autograd and batch norm on running statistics (eval mode, or a frozen ResNet)."""
        return not torch.is_grad_enabled() and (self.norm is FrozenBatchNorm2d or not self.training)

    @torch.no_grad()
    def forward_inference(self, x: Tensor) -> Tensor:
        """Batch norm folded into the convolutions; channels-last activations on CPU.

        Channels-last is oneDNN's native CPU layout: no reorder around every convolution.
        """
        if x.device.type == "cpu" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(conv_bn(self.conv1, self.bn1, x, relu=True))  # (B, 64, H/4, W/4)
        for block in (*self.layer1, *self.layer2, *self.layer3):
            x = block.forward_inference(x)
        return x  # (B, 1024, H/16, W/16)
