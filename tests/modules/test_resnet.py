"""ofa/modules/resnet.py: output grid (stride 16, 1024 channels), block counts, the folded inference path,
frozen batch norm, drop path."""

from __future__ import annotations

import pytest
import torch

from ofa.modules import resnet as resnet_module
from ofa.modules.resnet import Bottleneck, FrozenBatchNorm2d, ResNet, drop_path


@pytest.fixture(scope="module")
def resnet() -> ResNet:
    """One block per stage, with non-trivial batch-norm statistics and affine parameters."""
    torch.manual_seed(0)
    net = ResNet([1, 1, 1])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.mark.parametrize("h, w", [(32, 32), (48, 32), (40, 24)])
def test_output_grid_is_stride_16(resnet, h, w):
    with torch.no_grad():
        out = resnet(torch.randn(2, 3, h, w))
    assert out.shape == (2, 1024, -(-h // 16), -(-w // 16))  # ceil: padded convolutions and pooling


def test_block_counts_follow_the_layers_argument():
    net = ResNet([2, 1, 3])
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [2, 1, 3]
    assert all(isinstance(b, Bottleneck) for b in net.layer3)
    assert net.layer1[0].downsample is not None and net.layer1[1].downsample is None  # 64 -> 256 channels


def test_folded_inference_equals_the_autograd_path(resnet):
    """No grad + eval runs `forward_inference` (batch norm folded, channels-last on CPU)."""
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        fast = resnet(x)
    with torch.enable_grad():
        slow = resnet(x)  # eval mode with autograd: the plain layers
    assert slow.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * slow.abs().max().item())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN's fused convolutions")
def test_fused_inference_convolutions_equal_the_plain_ones(resnet, monkeypatch):
    """The CPU inference path runs ReLU and the residual add inside oneDNN's convolutions (and would fail
    here if it silently stopped doing so); the outputs equal separate conv / add / relu passes."""
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused = resnet(x)
    assert any(e.name == "mkldnn::_convolution_pointwise" for e in prof.events())
    monkeypatch.setattr(resnet_module, "FUSED_CONV", False)
    with torch.no_grad():
        plain = resnet(x)
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN's fused convolutions")
def test_inference_buffers_give_the_fresh_results_are_reused_and_never_returned(monkeypatch):
    """CPU inference writes its activations into this thread's reused buffers: bit for bit the results of
    fresh tensors; the same storage on the next call of that shape (and a view of it for a smaller call); the
    returned features are a fresh tensor that the next call does not overwrite."""
    torch.manual_seed(0)
    net = ResNet([2, 1, 2]).eval()  # blocks without a downsample: their residual sum lands in x in place
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x, small = torch.randn(3, 3, 64, 48), torch.randn(2, 3, 32, 48)
    resnet_module.release_inference_buffers()
    with torch.no_grad(), torch.profiler.profile() as prof:
        first = net(x)
    assert any(e.name == "mkldnn::_convolution_pointwise_" for e in prof.events())  # the in-place variant
    workspace = resnet_module._THREAD.workspace
    storage = {k: b.data_ptr() for k, b in workspace.buffers.items()}
    assert {"stem", "conv1", "conv2", "identity0", "identity1"} <= set(storage)
    kept = first.clone()
    with torch.no_grad():
        again, smaller = net(x), net(small)
    assert resnet_module._THREAD.workspace is workspace
    assert {k: b.data_ptr() for k, b in workspace.buffers.items()} == storage  # reused, not grown
    assert torch.equal(first, kept)  # the first result survived two more calls
    assert all(first.untyped_storage().data_ptr() != p for p in storage.values())
    monkeypatch.setattr(resnet_module, "REUSE_BUFFERS", False)
    with torch.no_grad():
        fresh, fresh_small = net(x), net(small)
    assert torch.equal(again, fresh) and torch.equal(first, fresh) and torch.equal(smaller, fresh_small)
    resnet_module.release_inference_buffers()
    assert resnet_module._THREAD.workspace is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN's fused convolutions")
def test_inference_buffers_are_per_thread(resnet):
    """Concurrent inference calls (a demo serving requests from a thread pool) each use their own buffers."""
    import threading

    torch.manual_seed(2)
    inputs = [torch.randn(2, 3, 64, 64) for _ in range(4)]
    with torch.no_grad():
        expected = [resnet(x) for x in inputs]
    results, workspaces = [None] * 4, [None] * 4

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[i] = resnet(inputs[i])
        workspaces[i] = resnet_module._THREAD.workspace  # kept alive: distinct ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, e) for r, e in zip(results, expected))
    assert None not in workspaces and len({id(w) for w in workspaces}) == 4


def test_samples_are_independent_in_eval(resnet):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resnet(x)[1:2], resnet(x[1:2]), atol=1e-5)


def test_frozen_batch_norm_never_trains():
    net = ResNet([1, 1, 1], frozen_bn=True).train()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    before = [m.running_mean.clone() for m in norms]
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))
    assert net.conv1.weight.grad is not None


def test_drop_path_zeroes_whole_samples_and_rescales():
    x = torch.ones(2000, 3, 4)
    assert drop_path(x, 0.3, training=False) is x and drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.equal(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))  # survivors rescaled
    assert (per_sample[~kept] == 0).all()
    assert abs(kept.float().mean().item() - 0.75) < 0.05 and abs(y.mean().item() - 1.0) < 0.07


def test_drop_path_rates_grow_along_a_stage():
    net = ResNet([1, 1, 3], drop_path_rate=0.2)
    assert [b.drop_path.p for b in net.layer3] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("train", [True, False], ids=["batch-stats", "running-stats"])
def test_channels_last_training_is_as_accurate_as_contiguous(resnet, train):
    """The default CPU layout (channels-last activations, with autograd) against a float64 run: output,
    input gradient, every parameter gradient and the updated running statistics within 1e-4 (relative to
    each tensor's max), as close as the contiguous layout gets. A layout slip (mis-strided gradient,
    a kernel reading the wrong layout) shows as an O(1) error; float noise stays ~1e-6."""
    import copy

    torch.manual_seed(1)
    x, g = torch.randn(4, 3, 64, 64), torch.randn(4, 1024, 4, 4)

    def run(dtype: torch.dtype, channels_last: bool) -> dict[str, torch.Tensor]:
        net = copy.deepcopy(resnet).to(dtype).train(train)
        net.channels_last = channels_last
        xx = x.to(dtype, copy=True).requires_grad_()
        out = net(xx)
        out.backward(g.to(dtype))
        got = {"out": out.detach(), "grad_in": xx.grad}
        got.update({k: p.grad for k, p in net.named_parameters()})
        got.update({k: b for k, b in net.named_buffers() if k.endswith(("running_mean", "running_var"))})
        return got

    ref = run(torch.float64, False)
    for channels_last in (True, False):
        got = run(torch.float32, channels_last)
        assert got["out"].is_contiguous(memory_format=torch.channels_last) == channels_last
        for key, want in ref.items():
            rel = (got[key].double() - want).abs().max() / want.abs().max().clamp_min(1e-12)
            assert rel < 1e-4, f"channels_last={channels_last} {key}: {rel:.1e}"
