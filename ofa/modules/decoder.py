"""OFA decoder with an incremental key/value cache."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.config import OFAConfig
from ofa.modules.encoder import EncoderOut, rel_pos_tables, split_heads
from ofa.modules.layers import DecoderLayer
from ofa.modules.position import decoder_image_position_idx, image_buckets, token_bucket_table, token_buckets


class DecoderCache:
    """Per-layer self-attention k/v (growing by one step per call) and cross-attention k/v (computed once).

    `index_select(order)` reorders every cached tensor along the batch dimension in place (beam search)
    and returns the cache.
    """

    def __init__(self, num_layers: int) -> None:
        self.layers: list[dict[str, dict[str, Tensor]]] = [{"self": {}, "cross": {}} for _ in range(num_layers)]
        self.static: dict[str, Tensor] = {}  # per-sample tensors that depend only on the encoder output

    @property
    def length(self) -> int:
        """Number of target positions already cached."""
        k = self.layers[0]["self"].get("k") if self.layers else None
        return 0 if k is None else k.size(2)

    def _dicts(self) -> list[dict[str, Tensor]]:
        return [self.static] + [d for layer in self.layers for d in layer.values()]

    def index_select(self, order: Tensor) -> DecoderCache:
        for d in self._dicts():
            for key, value in d.items():
                d[key] = value.index_select(0, order)
        return self


class OFADecoder(nn.Module):
    """Module names follow fairseq's `TransformerDecoder` in `unify_transformer.py` (spec §6.2)."""

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d, h, ib = cfg.d_model, cfg.decoder_attention_heads, cfg.image_bucket_size
        self.cfg, self.heads, self.padding_idx = cfg, h, cfg.pad_token_id
        self.pos_scaling = (d / h * cfg.attn_scale_factor) ** -0.5
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.code_layernorm_embedding = nn.LayerNorm(d) if cfg.code_layernorm_embedding else None
        self.embed_positions = nn.Embedding(cfg.max_target_positions + 2, d)
        self.embed_image_positions = nn.Embedding(ib * ib + 1, d)
        self.pos_ln, self.image_pos_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_pos_q_linear, self.self_pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        self.cross_pos_q_linear, self.cross_pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        rates = torch.linspace(0, cfg.decoder_drop_path_rate, cfg.decoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            DecoderLayer(d, h, cfg.decoder_ffn_dim, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout,
                         rate, cfg.attn_scale_factor, cfg.normformer) for rate in rates)
        self.layer_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False, device="meta")
        self.output_projection.weight = embed_tokens.weight  # tied (no storage of its own)
        self.token_rel_pos_table_list = rel_pos_tables(cfg.decoder_layers, 2 * cfg.token_bucket_size - 1, h)
        self.image_rel_pos_table_list = rel_pos_tables(cfg.decoder_layers, (2 * ib - 1) ** 2 + 3, h)
        self.register_buffer("token_rp_bucket", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("image_position_idx", torch.empty(0, dtype=torch.long), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the derived, non-persistent buffers from the config."""
        cfg, device = self.cfg, self.token_rp_bucket.device
        table = token_bucket_table(cfg.token_bucket_size, cfg.max_target_positions)
        self.token_rp_bucket = table.to(device)  # 1-D, indexed by i - j + M - 1
        self.image_position_idx = decoder_image_position_idx(cfg.code_image_size, cfg.image_bucket_size).to(device)

    def _positions(self, start: int, t: int, code: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """Raw and layer-normed position embeddings of target positions start..t-1, (1|B, n, D) each."""
        raw = self.embed_positions(torch.arange(start, t, device=device))[None]  # (1, n, D)
        normed = self.pos_ln(raw)
        if code is not None:  # image-code samples use the 2-D image positions
            img = self.embed_image_positions(self.image_position_idx[start:t])[None]
            sel = code[:, None, None]
            raw, normed = torch.where(sel, img, raw), torch.where(sel, self.image_pos_ln(img), normed)
        return raw, normed  # (1|B, n, D)

    def _self_pos_bias(self, pos: Tensor, b: int, cache: DecoderCache | None) -> Tensor:
        """Abs-position bias of the new positions `pos` (1|B,n,D) to all positions so far: (1|B, H, n, T)."""
        k = split_heads(self.self_pos_k_linear(pos), self.heads)  # (1|B, H, n, hd)
        if cache is not None:  # keys of earlier positions come from the cache
            k = k.expand(b, -1, -1, -1)
            if "self_pos_k" in cache.static:
                k = torch.cat([cache.static["self_pos_k"], k], dim=2)  # (B, H, T, hd)
            cache.static["self_pos_k"] = k
        q = split_heads(self.self_pos_q_linear(pos) * self.pos_scaling, self.heads)
        return q @ k.transpose(2, 3)

    def _embed(self, tokens: Tensor, raw_pos: Tensor, code: Tensor | None) -> Tensor:
        x = self.embed_tokens(tokens)  # (B, n, D)
        if not self.cfg.disable_entangle:
            x = x + raw_pos
        if self.layernorm_embedding is not None:
            y = self.layernorm_embedding(x)
            if code is not None and self.code_layernorm_embedding is not None:
                y = torch.where(code[:, None, None], self.code_layernorm_embedding(x), y)
            x = y
        return F.dropout(x, self.cfg.dropout, self.training)

    def _self_mask(self, tokens: Tensor, start: int) -> Tensor:
        """Causal + pad-key mask (B,1,n,T) as an additive float; a position always sees itself."""
        t = tokens.size(1)
        q = torch.arange(start, t, device=tokens.device)[:, None]
        k = torch.arange(t, device=tokens.device)[None, :]
        masked = (k > q) | (tokens.eq(self.padding_idx)[:, None, :] & (k != q))  # (B, n, T)
        zeros = torch.zeros(masked.shape, dtype=torch.float32, device=tokens.device)
        return zeros.masked_fill(masked, float("-inf"))[:, None]

    def _rel_bias(self, idx: int, start: int, t: int, code: Tensor | None, device: torch.device) -> Tensor:
        """This layer's relative bias for query rows start..t-1: (1|B, H, n, T)."""
        q, k = torch.arange(start, t, device=device), torch.arange(t, device=device)
        rel = self.token_rel_pos_table_list[idx](token_buckets(self.token_rp_bucket, q, k))  # (n, T, H)
        rel = rel.permute(2, 0, 1)[None]
        if code is not None:
            ids = self.image_position_idx[:t]
            img = self.image_rel_pos_table_list[idx](image_buckets(ids[start:], ids, self.cfg.image_bucket_size))
            rel = torch.where(code[:, None, None, None], img.permute(2, 0, 1)[None], rel)
        return rel

    def _cross_bias(self, q_pos: Tensor, enc: EncoderOut, cache: DecoderCache | None) -> Tensor:
        """Abs-position bias to the encoder positions + encoder padding: (B, H, n, S)."""
        if cache is not None and "cross_pos_k" in cache.static:
            k = cache.static["cross_pos_k"]
        else:
            k = self.cross_pos_k_linear(enc.position_embeddings)  # (B, S, D)
            if cache is not None:
                cache.static["cross_pos_k"] = k
        q = split_heads(self.cross_pos_q_linear(q_pos) * self.pos_scaling, self.heads)  # (1|B, H, n, hd)
        bias = (q @ split_heads(k, self.heads).transpose(2, 3)).expand(enc.hidden.size(0), -1, -1, -1)
        return bias.masked_fill(enc.padding_mask[:, None, None, :], float("-inf"))

    def extract_features(self, tokens: Tensor, enc: EncoderOut, code_masks: Tensor | None = None,
                         cache: DecoderCache | None = None,
                         return_hidden_states: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """Hidden states after the final layer norm for the positions not yet cached: (B, n, D)."""
        b, t = tokens.shape
        start = 0 if cache is None else cache.length
        if start >= t:
            raise ValueError(f"cache already holds {start} positions; got a prefix of length {t}")
        code = code_masks.to(torch.bool) if code_masks is not None and bool(code_masks.any()) else None
        raw_pos, pos = self._positions(start, t, code, tokens.device)  # (1|B, n, D)
        self_abs = self._self_pos_bias(pos, b, cache) + self._self_mask(tokens, start)  # (B, H, n, T)
        cross = self._cross_bias(pos, enc, cache)  # (B, H, n, S)
        x = self._embed(tokens[:, start:], raw_pos, code)  # (B, n, D)
        states = [x] if return_hidden_states else None
        for idx, layer in enumerate(self.layers):
            self_bias = self_abs + self._rel_bias(idx, start, t, code, tokens.device)
            x = layer(x, enc.hidden, self_bias, cross, None if cache is None else cache.layers[idx])
            if states is not None:
                states.append(x)
        return self.layer_norm(x), states

    def forward(self, tokens: Tensor, enc: EncoderOut, code_masks: Tensor | None = None,
                cache: DecoderCache | None = None) -> Tensor:
        """Logits (B,T,V) without a cache; with a cache only the last position's, (B,1,V)."""
        x, _ = self.extract_features(tokens, enc, code_masks, cache)
        if cache is not None:
            x = x[:, -1:]
        return self.output_projection(x)
