"""Pre-LN Transformer layers with OFA's NormFormer extras (attn_ln, ffn_layernorm, c_attn), optional adapters
and deep-prompt prefixes (spec §8)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.adapter import Adapter
from ofa.modules.attention import MultiheadAttention
from ofa.modules.resnet import drop_path


def _ln(dim: int, on: bool) -> nn.LayerNorm | None:
    return nn.LayerNorm(dim) if on else None


def _maybe(norm: nn.Module | None, x: Tensor) -> Tensor:
    return x if norm is None else norm(x)


class _PreLNLayer(nn.Module):
    """Shared pieces: the FFN block (fc1 -> gelu -> ffn_layernorm -> fc2 [-> adapter]) and the residual step."""

    def _init_ffn(self, d: int, ffn: int, normformer: bool, dropout: float, activation_dropout: float,
                  drop_path_rate: float, adapter_dim: int = 0) -> None:
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.ffn_layernorm = _ln(ffn, normformer)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout, self.activation_dropout, self.drop_path = dropout, activation_dropout, drop_path_rate
        self.adapter = Adapter(d, adapter_dim) if adapter_dim else None

    def _ffn(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(self.final_layer_norm(x)))  # (B, T, F)
        h = F.dropout(h, self.activation_dropout, self.training)
        return self.fc2(_maybe(self.ffn_layernorm, h))  # (B, T, D)

    def _residual(self, r: Tensor, h: Tensor, adapter: nn.Module | None = None) -> Tensor:
        h = F.dropout(h, self.dropout, self.training)
        h = _maybe(adapter, h)  # OFA: the adapter sits after the FFN's dropout, before the residual
        return r + drop_path(h, self.drop_path, self.training)


class EncoderLayer(_PreLNLayer):
    """x + drop_path(attn_ln(self_attn(LN(x)))); x + drop_path(ffn(LN(x)))."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, drop_path_rate: float, scale_factor: float, normformer: bool,
                 adapter_dim: int = 0) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d, heads, attention_dropout, scale_factor, normformer)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.attn_ln = _ln(d, normformer)
        self._init_ffn(d, ffn, normformer, dropout, activation_dropout, drop_path_rate, adapter_dim)

    def forward(self, x: Tensor, bias: Tensor, prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B,S,D); bias (B,H,S,S) = position biases + key padding; prefix: deep-prompt k/v or None."""
        h = self.self_attn(self.self_attn_layer_norm(x), bias, prefix=prefix)
        x = self._residual(x, _maybe(self.attn_ln, h))
        return self._residual(x, self._ffn(x), self.adapter)


class DecoderLayer(_PreLNLayer):
    """Self-attention, cross-attention and FFN blocks, each pre-LN with a NormFormer mid-norm."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, drop_path_rate: float, scale_factor: float, normformer: bool,
                 adapter_dim: int = 0) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d, heads, attention_dropout, scale_factor, normformer)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_ln = _ln(d, normformer)
        self.encoder_attn = MultiheadAttention(d, heads, attention_dropout, scale_factor, normformer)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_ln = _ln(d, normformer)
        self._init_ffn(d, ffn, normformer, dropout, activation_dropout, drop_path_rate, adapter_dim)

    def forward(self, x: Tensor, memory: Tensor, self_bias: Tensor, cross_bias: Tensor,
                cache: dict | None = None, prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B,T,D) new positions; memory (B,S,D) encoder output; biases (B,H,T,T_all) / (B,H,T,S);
        prefix: deep-prompt k/v of the self-attention or None."""
        h = self.self_attn(self.self_attn_layer_norm(x), self_bias,
                           cache=None if cache is None else cache["self"], prefix=prefix)
        x = self._residual(x, _maybe(self.self_attn_ln, h))
        h = self.encoder_attn(self.encoder_attn_layer_norm(x), cross_bias, kv=memory,
                              cache=None if cache is None else cache["cross"])
        x = self._residual(x, _maybe(self.cross_attn_ln, h))
        return self._residual(x, self._ffn(x), self.adapter)
