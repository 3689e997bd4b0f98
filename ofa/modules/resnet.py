"""OFA's image backbone: ResNet v1.5 stages 1-3 (Bottleneck blocks), stride 16, 1024 channels."""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.workspace import Workspace


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
            residual: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """`bn(conv(x)) (+ residual) (.relu())` with running statistics, as one convolution (scaled weights,
    shifted bias).

    On the CPU with oneDNN, the ReLU and the residual add run inside the convolution (oneDNN post-ops, the
    kernels `torch.compile` uses for CPU inference) instead of as separate passes over the activations:
    ~10% of the inference ResNet's time for ofa_tiny at 256 px (experiments/README.md, issue 12). There,
    `out` (a buffer of the output's shape and layout; may be `residual` itself) receives the result in place
    of a fresh tensor; elsewhere it is ignored.
    """
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C,)
    weight, bias = conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale
    if _fused_cpu_conv(x):
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        unary = "relu" if relu else "none"
        if out is not None:  # out = conv(x) + (residual or 0), in place: oneDNN's sum into the destination
            if residual is None:
                out.zero_()
            elif residual is not out:
                out.copy_(residual)
            after_sum = "relu" if relu else None  # (the in-place op takes None where the others take "none")
            return torch.ops.mkldnn._convolution_pointwise_.binary(out, x, weight, bias, *args, "add", None,
                                                                    after_sum, [None], "")
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
REUSE_BUFFERS = True  # CPU inference writes into ConvBuffers (tests switch it off to compare)

_THREAD = threading.local()  # each thread its own buffers: concurrent inference calls never share one


class ConvBuffers:
    """Where the CPU inference ResNet's convolutions write: this thread's reused buffers, not fresh tensors.

    A fresh activation tensor of tens of megabytes (ofa_tiny, 8 images of 256 px: up to 33.5 MB) is mmap'd by
    glibc and page-faulted in on every call, which doubled the time of the convolutions that write one (a 1x1
    convolution to 256 channels at 64x64: 32 ms fresh, 16 ms into a reused buffer). Buffers are channels-last
    views of this thread's `Workspace`, grown to the largest call and kept (`release_inference_buffers`).
    """

    def __init__(self) -> None:
        if getattr(_THREAD, "workspace", None) is None:
            _THREAD.workspace = Workspace()
        self.workspace = _THREAD.workspace

    def take(self, name: str, conv: nn.Conv2d, x: Tensor) -> Tensor:
        """The (B, C_out, H_out, W_out) channels-last buffer `name` for `conv(x)` (stale contents)."""
        (b, _, h, w), (kh, kw), (sh, sw), (ph, pw) = x.shape, conv.kernel_size, conv.stride, conv.padding
        dh, dw = conv.dilation
        shape = (b, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
                 conv.out_channels)  # (B, H, W, C)
        return self.workspace.get(name, shape, x.dtype, x.device).permute(0, 3, 1, 2)


def release_inference_buffers() -> None:
    """Free this thread's inference ResNet buffers (they are kept for the next call otherwise)."""
    _THREAD.workspace = None


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

    def forward_inference(self, x: Tensor, buffers: ConvBuffers | None = None, identity_buffer: str = "",
                          last: bool = False) -> Tensor:
        """`forward` without autograd, batch norm on running statistics folded into the convolutions.

        With `buffers`, the convolutions write into them and the residual sum lands in the identity in place:
        in `x` itself without a downsample (so `x` must be a buffer, the previous block's output), else in
        buffer `identity_buffer`; `last` returns a fresh tensor, never a buffer the next call reuses.
        """
        def into(name: str, conv: nn.Conv2d, inp: Tensor) -> Tensor | None:
            return buffers.take(name, conv, inp) if buffers is not None else None

        identity = x
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = conv_bn(conv, bn, x, out=into(identity_buffer, conv, x))
        out = conv_bn(self.conv1, self.bn1, x, relu=True, out=into("conv1", self.conv1, x))
        out = conv_bn(self.conv2, self.bn2, out, relu=True, out=into("conv2", self.conv2, out))
        in_place = buffers is not None and not last
        return conv_bn(self.conv3, self.bn3, out, relu=True, residual=identity, out=identity if in_place else None)


class ResNet(nn.Module):
    """conv1/bn1/maxpool + layer1..3; `forward` maps (B,3,H,W) to (B,1024,H/16,W/16).

    On CPU the activations are channels-last (oneDNN's native layout: no reorder around each convolution),
    with autograd too: the training step of ofa_tiny at 256 px is ~1.2x faster (experiments/README.md,
    "Channels-last training, generation without fresh buffers"). Without autograd and with running
    statistics, `forward_inference` runs (batch norm folded into the convolutions as well: ~1.4x; on CPU the
    convolutions write into reused buffers, `ConvBuffers`, instead of fresh tensors: ~1.2x more). The
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
        buffers = None
        if x.device.type == "cpu" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            # (not under torch.compile: the compiler plans its own memory)
            reuse = REUSE_BUFFERS and _fused_cpu_conv(x) and not torch.compiler.is_compiling()
            buffers = ConvBuffers() if reuse else None
        stem = buffers.take("stem", self.conv1, x) if buffers is not None else None
        x = self.maxpool(conv_bn(self.conv1, self.bn1, x, relu=True, out=stem))  # (B, 64, H/4, W/4)
        layers = (self.layer1, self.layer2, self.layer3)
        for i, layer in enumerate(layers):
            for j, block in enumerate(layer):
                # a layer's downsample reads the previous layer's identity buffer: two, in turn
                x = block.forward_inference(x, buffers, identity_buffer=f"identity{i % 2}",
                                            last=i == len(layers) - 1 and j == len(layer) - 1)
        return x  # (B, 1024, H/16, W/16)
