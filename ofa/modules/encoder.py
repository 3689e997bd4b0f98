"""OFA encoder: [ResNet image patches ; text tokens] -> pre-LN Transformer with position biases."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.config import OFAConfig
from ofa.modules.layers import EncoderLayer
from ofa.modules.position import encoder_image_position_ids, image_buckets, token_bucket_table, token_buckets
from ofa.modules.resnet import ResNet


@dataclass
class EncoderOut:
    """What the decoder needs from the encoder (batch-first)."""

    hidden: Tensor  # (B, S, D), after the final layer norm
    padding_mask: Tensor  # (B, S) bool, True = pad (image patches of text-only samples, pad tokens)
    position_embeddings: Tensor  # (B, S, D) layer-normed [image_pos ; text_pos], for the cross-attn bias
    hidden_states: list[Tensor] | None = None  # embedding output + each layer's output (when asked)

    def index_select(self, order: Tensor) -> EncoderOut:
        """Reorder / repeat samples along the batch (beam search)."""
        pick = lambda t: t.index_select(0, order)  # noqa: E731
        states = None if self.hidden_states is None else [pick(h) for h in self.hidden_states]
        return EncoderOut(pick(self.hidden), pick(self.padding_mask), pick(self.position_embeddings), states)


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, hd)


def position_bias(q_linear: nn.Linear, k_linear: nn.Linear, q_pos: Tensor, k_pos: Tensor,
                  heads: int, scaling: float) -> Tensor:
    """OFA's absolute-position bias: per-head (q_linear(q_pos) * scaling) @ k_linear(k_pos)^T. (B,H,Tq,Tk)"""
    q = split_heads(q_linear(q_pos) * scaling, heads)
    return q @ split_heads(k_linear(k_pos), heads).transpose(2, 3)


def rel_pos_tables(n_layers: int, size: int, heads: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Embedding(size, heads) for _ in range(n_layers))


class OFAEncoder(nn.Module):
    """Module names follow fairseq's `TransformerEncoder` in `unify_transformer.py` (spec §6.2)."""

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d, h, ib = cfg.d_model, cfg.encoder_attention_heads, cfg.image_bucket_size
        self.cfg, self.heads, self.padding_idx = cfg, h, cfg.pad_token_id
        self.pos_scaling = (d / h * cfg.attn_scale_factor) ** -0.5
        self.embed_tokens = embed_tokens
        self.type_embedding = nn.Embedding(2, d) if cfg.add_type_embedding else None
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.patch_layernorm_embedding = nn.LayerNorm(d) if cfg.patch_layernorm_embedding else None
        self.embed_images = ResNet(cfg.resnet_blocks, cfg.resnet_drop_path_rate, frozen_bn=cfg.freeze_resnet)
        self.image_proj = nn.Linear(1024, d)
        self.embed_positions = nn.Embedding(cfg.max_source_positions + 2, d)
        self.embed_image_positions = nn.Embedding(ib * ib + 1, d)
        self.pos_ln, self.image_pos_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.pos_q_linear, self.pos_k_linear = nn.Linear(d, d), nn.Linear(d, d)
        rates = torch.linspace(0, cfg.encoder_drop_path_rate, cfg.encoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            EncoderLayer(d, h, cfg.encoder_ffn_dim, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout,
                         rate, cfg.attn_scale_factor, cfg.normformer) for rate in rates)
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = rel_pos_tables(cfg.encoder_layers, 2 * cfg.token_bucket_size - 1, h)
        self.image_rel_pos_table_list = rel_pos_tables(cfg.encoder_layers, (2 * ib - 1) ** 2 + 3, h)
        self.register_buffer("token_rp_bucket", torch.empty(0, dtype=torch.long), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the derived, non-persistent buffers from the config."""
        table = token_bucket_table(self.cfg.token_bucket_size, self.cfg.max_source_positions)
        self.token_rp_bucket = table.to(self.token_rp_bucket.device)  # 1-D, indexed by i - j + M - 1

    def _type(self, x: Tensor, type_id: int) -> Tensor:
        if self.type_embedding is None:
            return x
        return x + self.type_embedding.weight[type_id]

    def embed_text(self, src_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Token embeddings (B,L,D) and raw position embeddings (1,L,D) of the text stream."""
        x = self.embed_tokens(src_tokens)  # (B, L, D)
        pos = self.embed_positions(torch.arange(src_tokens.size(1), device=src_tokens.device))[None]
        if self.cfg.entangle_position_embedding:
            x = x + pos
        x = self._type(x, 0)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return F.dropout(x, self.cfg.dropout, self.training), pos

    def embed_patches(self, patch_images: Tensor, patch_masks: Tensor | None,
                      sample_patch_num: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Patch embeddings (B,P,D), padding mask (B,P), position ids (1|B,P), raw position embeddings."""
        feat = self.embed_images(patch_images)  # (B, 1024, h, w)
        b, _, gh, gw = feat.shape
        if max(gh, gw) > self.cfg.image_bucket_size:
            raise ValueError(f"patch grid {gh}x{gw} exceeds image_bucket_size={self.cfg.image_bucket_size}")
        feat = feat.flatten(2).transpose(1, 2)  # (B, P, 1024)
        ids = encoder_image_position_ids(gh, gw, self.cfg.image_bucket_size, feat.device)[None]  # (1, P)
        pad = torch.zeros(b, gh * gw, dtype=torch.bool, device=feat.device)
        if patch_masks is not None:
            pad = pad | ~patch_masks.to(torch.bool)[:, None]
        if sample_patch_num is not None:  # random subset of patches per sample (pretraining)
            order = torch.rand(b, gh * gw, device=feat.device).argsort(dim=1)[:, :sample_patch_num]  # (B, k)
            feat = feat.gather(1, order[..., None].expand(-1, -1, feat.size(2)))
            pad, ids = pad.gather(1, order), ids.expand(b, -1).gather(1, order)
        pos = self.embed_image_positions(ids)  # (1|B, P, D)
        x = self.image_proj(feat)  # (B, P, D)
        if self.cfg.entangle_position_embedding:
            x = x + pos
        x = self._type(x, 1)
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return F.dropout(x, self.cfg.dropout, self.training), pad, ids, pos

    def _layer_bias(self, base: Tensor, idx: int, n_img: int, text_buckets: Tensor,
                    img_buckets: Tensor | None) -> Tensor:
        """Shared abs bias + this layer's relative biases (text x text and image x image blocks)."""
        bias = base.clone()
        text = self.token_rel_pos_table_list[idx](text_buckets).permute(2, 0, 1)  # (H, L, L)
        bias[:, :, n_img:, n_img:] += text
        if img_buckets is not None:
            img = self.image_rel_pos_table_list[idx](img_buckets)  # (1|B, P, P, H)
            bias[:, :, :n_img, :n_img] += img.permute(0, 3, 1, 2)
        return bias

    def forward(self, src_tokens: Tensor, patch_images: Tensor | None = None, patch_masks: Tensor | None = None,
                sample_patch_num: int | None = None, return_hidden_states: bool = False) -> EncoderOut:
        """src_tokens (B,L) right-padded; patch_images (B,3,H,W); patch_masks (B,) False = text-only."""
        x, pos = self.embed_text(src_tokens)  # (B, L, D), (1, L, D)
        b, seq = src_tokens.shape
        pad = src_tokens.eq(self.padding_idx)  # (B, L)
        pos = self.pos_ln(pos).expand(b, -1, -1)
        img_buckets, n_img = None, 0
        if patch_images is not None:
            xi, pad_i, ids, pos_i = self.embed_patches(patch_images, patch_masks, sample_patch_num)
            n_img = xi.size(1)
            x, pad = torch.cat([xi, x], dim=1), torch.cat([pad_i, pad], dim=1)  # (B, S, D), (B, S)
            pos = torch.cat([self.image_pos_ln(pos_i).expand(b, -1, -1), pos], dim=1)  # (B, S, D)
            img_buckets = image_buckets(ids, ids, self.cfg.image_bucket_size)  # (1|B, P, P)
        x = x * (1 - pad[..., None].type_as(x))
        positions = torch.arange(seq, device=x.device)
        text_buckets = token_buckets(self.token_rp_bucket, positions, positions)  # (L, L)
        base = position_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, self.heads, self.pos_scaling)
        base = base.masked_fill(pad[:, None, None, :], float("-inf"))  # (B, H, S, S)
        states = [x] if return_hidden_states else None
        for idx, layer in enumerate(self.layers):
            x = layer(x, self._layer_bias(base, idx, n_img, text_buckets, img_buckets))
            if states is not None:
                states.append(x)
        return EncoderOut(self.layer_norm(x), pad, pos, states)
