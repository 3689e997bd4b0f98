"""ofa/modules/attention.py: head splitting, the two `attend` paths, bias builders, MultiheadAttention
(shapes, key masks, head scales, self- and cross-attention caches, grouped query rows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ofa.modules.attention import MultiheadAttention, attend, fold_rows, key_padding_bias, position_bias, split_heads

D, H = 16, 4


def reference_attention(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v, written out."""
    return torch.softmax(q @ k.transpose(-1, -2) * scale + bias, dim=-1) @ v


def causal_bias(t: int) -> torch.Tensor:
    return torch.full((t, t), float("-inf")).triu(1)  # (T, T): -inf above the diagonal


@pytest.fixture
def mha() -> MultiheadAttention:
    torch.manual_seed(0)
    m = MultiheadAttention(D, H).eval()
    with torch.no_grad():
        m.c_attn.uniform_(0.5, 1.5)  # not all ones, so the head scales matter
    return m


def test_split_heads_shape_and_inverse():
    x = torch.randn(3, 5, D)
    heads = split_heads(x, H)
    assert heads.shape == (3, H, 5, D // H)
    assert torch.equal(heads[:, 1], x[..., D // H: 2 * D // H])  # head h = channels h*hd .. (h+1)*hd
    assert torch.equal(heads.transpose(1, 2).reshape(3, 5, D), x)


@pytest.mark.parametrize("bias_grad", [False, True], ids=["sdpa", "baddbmm"])
def test_attend_matches_the_formula_on_both_paths(bias_grad):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, n, 8, generator=g) for n in (3, 5, 5))
    bias = torch.randn(2, H, 3, 5, generator=g).requires_grad_(bias_grad)
    out = attend(q, k, v, bias, scale=0.3)
    assert out.shape == (2, H, 3, 8)
    assert torch.allclose(out, reference_attention(q, k, v, bias, 0.3), atol=1e-5)
    if bias_grad:  # the learned position biases get the reference gradient
        (grad,) = torch.autograd.grad(out.square().sum(), bias)
        ref = bias.detach().requires_grad_()
        (ref_grad,) = torch.autograd.grad(reference_attention(q, k, v, ref, 0.3).square().sum(), ref)
        assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_key_padding_bias():
    pad = torch.tensor([[False, False, True], [False, False, False]])
    bias = key_padding_bias(pad, torch.float32)
    assert bias.shape == (2, 1, 1, 3)
    assert bias[0, 0, 0].tolist() == [0.0, 0.0, float("-inf")] and bias[1].eq(0).all()
    assert key_padding_bias(torch.zeros(2, 3, dtype=torch.bool), torch.float32) is None


def test_position_bias_is_per_head_dot_product():
    torch.manual_seed(0)
    q_lin, k_lin = nn.Linear(D, D), nn.Linear(D, D)
    q_pos, k_pos = torch.randn(1, 3, D), torch.randn(1, 5, D)
    bias = position_bias(q_lin, k_lin, q_pos, k_pos, H, scaling=0.5)
    assert bias.shape == (1, H, 3, 5)
    hd = D // H
    qh, kh = q_lin(q_pos)[0, :, 2 * hd: 3 * hd] * 0.5, k_lin(k_pos)[0, :, 2 * hd: 3 * hd]
    assert torch.allclose(bias[0, 2], qh @ kh.T, atol=1e-6)


def test_scaling_and_head_scales(mha):
    assert mha.scaling == pytest.approx((D // H * 2.0) ** -0.5)  # OFA's attn_scale_factor 2
    x = torch.randn(2, 4, D)
    with torch.no_grad():
        mha.c_attn.zero_()  # every head silenced: only the output projection's bias remains
        out = mha(x, torch.zeros(1, 1, 4, 4))
    assert out.shape == (2, 4, D)
    assert torch.allclose(out, mha.out_proj.bias.expand(2, 4, D))


@torch.no_grad()
def test_masked_keys_do_not_matter(mha):
    """Extra keys masked with -inf (padding) leave the outputs of the real positions unchanged."""
    x = torch.randn(2, 4, D)
    memory = torch.randn(2, 6, D)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    out = mha(x, key_padding_bias(pad, x.dtype), kv=memory)
    changed = memory.clone()
    changed[1, 4:] = 100.0  # the padded keys / values of row 1
    assert torch.allclose(out, mha(x, key_padding_bias(pad, x.dtype), kv=changed), atol=1e-6)
    assert torch.allclose(out[1], mha(x[1:], torch.zeros(1, 1, 1, 4), kv=memory[1:, :4])[0], atol=1e-6)


@torch.no_grad()
def test_self_attention_cache_equals_causal_full(mha):
    x = torch.randn(2, 5, D)
    full = mha(x, causal_bias(5))
    cache: dict = {}
    steps = [mha(x[:, t: t + 1], torch.zeros(1, 1, 1, t + 1), cache=cache) for t in range(5)]
    assert cache["k"].shape == (2, H, 5, D // H)  # one key per position so far
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-6)


@torch.no_grad()
def test_causal_mask_hides_the_future(mha):
    x = torch.randn(1, 5, D)
    later = x.clone()
    later[:, 3:] = torch.randn(1, 2, D)
    a, b = mha(x, causal_bias(5)), mha(later, causal_bias(5))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3:], b[:, 3:])


@torch.no_grad()
def test_cross_attention_cache_computes_keys_once(mha):
    x, memory = torch.randn(2, 3, D), torch.randn(2, 6, D)
    bias = torch.zeros(1, 1, 1, 6)
    calls = []
    hook = mha.k_proj.register_forward_hook(lambda *args: calls.append(1))
    try:
        cache: dict = {}
        steps = [mha(x[:, t: t + 1], bias, kv=memory, cache=cache) for t in range(3)]
    finally:
        hook.remove()
    assert len(calls) == 1 and cache["k"].shape == (2, H, 6, D // H)
    assert torch.allclose(torch.cat(steps, 1), mha(x, bias, kv=memory), atol=1e-6)


@torch.no_grad()
def test_grouped_query_rows_share_key_rows(mha):
    """Beam layout: R = B*G query rows against B key rows equals repeating each key row G times."""
    b, g = 2, 3
    x, memory = torch.randn(b * g, 4, D), torch.randn(b, 6, D)
    pad = torch.tensor([[False] * 6, [False] * 5 + [True]])
    repeated = mha(x, key_padding_bias(pad.repeat_interleave(g, 0), x.dtype), kv=memory.repeat_interleave(g, 0))
    assert torch.allclose(mha(x, key_padding_bias(pad, x.dtype), kv=memory), repeated, atol=1e-6)


def test_fold_rows_layout():
    x = torch.arange(6 * 2 * 3 * 1).view(6, 2, 3, 1)  # (B*G, H, T, 1) with B=2, G=3
    folded = fold_rows(x, 3)
    assert folded.shape == (2, 2, 9, 1)
    assert torch.equal(folded[1, 0, 3:6], x[4, 0])  # batch 1, group member 1: its T queries in order
    assert fold_rows(x, 1) is x
