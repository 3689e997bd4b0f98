"""OFA encoder: [ResNet image patches ; text tokens] -> pre-LN Transformer with position biases."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ofa.modules.attention import key_padding_bias, position_bias
from ofa.modules.config import OFAConfig
from ofa.modules.layers import EncoderLayer
from ofa.modules.position import encoder_image_position_ids, image_buckets, rel_pos_tables, token_bucket_table
from ofa.modules.position import token_buckets
from ofa.modules.prompt import PromptEncoder
from ofa.modules.resnet import ResNet


@dataclass
class EncoderOut:
    """What the decoder needs from the encoder (batch-first)."""

    hidden: Tensor  # (B, S, D), after the final layer norm
    padding_mask: Tensor  # (B, S) bool, True = pad (image patches of text-only samples, pad tokens)
    position_embeddings: Tensor  # (B, S, D) layer-normed [image_pos ; text_pos], for the cross-attn bias
    hidden_states: list[Tensor] | None = None  # embedding output + each layer's output (when asked)
    # (weak ref to the EncoderOut this one was selected from, the order): lets a decoder cache reorder
    # what it derived from that one instead of recomputing it
    source: tuple[weakref.ref, Tensor] | None = field(default=None, repr=False, compare=False)

    def index_select(self, order: Tensor) -> EncoderOut:
        """Reorder / repeat samples along the batch (beam search). Batch-shared (expanded) tensors stay views."""
        states = None if self.hidden_states is None else [select_rows(h, order) for h in self.hidden_states]
        return EncoderOut(select_rows(self.hidden, order), select_rows(self.padding_mask, order),
                          select_rows(self.position_embeddings, order), states, (weakref.ref(self), order))


def select_rows(t: Tensor, order: Tensor) -> Tensor:
    """`t.index_select(0, order)`, as an expanded view when `t` is one row shared by the batch."""
    if t.size(0) == 1 or t.stride(0) == 0:
        return t[:1].expand(order.numel(), *t.shape[1:])
    return t.index_select(0, order)


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
                         rate, cfg.attn_scale_factor, cfg.normformer, cfg.adapter_dim) for rate in rates)
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = rel_pos_tables(cfg.encoder_layers, 2 * cfg.token_bucket_size - 1, h)
        self.image_rel_pos_table_list = rel_pos_tables(cfg.encoder_layers, (2 * ib - 1) ** 2 + 3, h)
        self.encoder_prompt_encoder = PromptEncoder(
            cfg.encoder_prompt_length, cfg.encoder_layers, d, h, cfg.prompt_projection, cfg.prompt_dim,
            cfg.prompt_dropout) if cfg.encoder_prompt_length else None
        self.register_buffer("token_rp_bucket", torch.empty(0, dtype=torch.long), persistent=False)
        self._bucket_cache: dict[tuple, Tensor] = {}
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the derived, non-persistent buffers from the config."""
        table = token_bucket_table(self.cfg.token_bucket_size, self.cfg.max_source_positions)
        self.token_rp_bucket = table.to(self.token_rp_bucket.device)  # 1-D, indexed by i - j + M - 1
        self._bucket_cache.clear()

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
                      sample_patch_num: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple | None]:
        """Patch embeddings (B,P,D), padding mask (B,P), position ids (1|B,P), raw position embeddings (1|B,P,D)
        and the grid (h, w), None when patches were sampled per sample."""
        feat = self.embed_images(patch_images)  # (B, 1024, h, w)
        b, _, gh, gw = feat.shape
        if max(gh, gw) > self.cfg.image_bucket_size:
            raise ValueError(f"patch grid {gh}x{gw} exceeds image_bucket_size={self.cfg.image_bucket_size}")
        feat = feat.flatten(2).transpose(1, 2)  # (B, P, 1024), contiguous when feat is channels-last
        ids = encoder_image_position_ids(gh, gw, self.cfg.image_bucket_size, feat.device)[None]  # (1, P)
        pad, grid = torch.zeros(b, gh * gw, dtype=torch.bool, device=feat.device), (gh, gw)
        if patch_masks is not None:
            pad = pad | ~patch_masks.to(torch.bool)[:, None]
        if sample_patch_num is not None:  # random subset of patches per sample (pretraining)
            order = torch.rand(b, gh * gw, device=feat.device).argsort(dim=1)[:, :sample_patch_num]  # (B, k)
            feat = feat.gather(1, order[..., None].expand(-1, -1, feat.size(2)))
            pad, ids, grid = pad.gather(1, order), ids.expand(b, -1).gather(1, order), None
        pos = self.embed_image_positions(ids)  # (1|B, P, D)
        if self.cfg.interpolate_position and sample_patch_num is None:
            pos = self._interpolated_positions(gh, gw, pos)
        x = self.image_proj(feat)  # (B, P, D)
        if self.cfg.entangle_position_embedding:
            x = x + pos
        x = self._type(x, 1)
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return F.dropout(x, self.cfg.dropout, self.training), pad, ids, pos, grid

    def _interpolated_positions(self, gh: int, gw: int, pos: Tensor) -> Tensor:
        """OFA's `--interpolate-position`: for a patch grid larger than the pretraining grid (side
        `orig_patch_image_size // 16`), the image position embeddings are the bilinear resize of that
        grid's embeddings (ids `row * bucket + col + 1`) to (gh, gw); otherwise `pos` unchanged. (1, P, D)"""
        side = self.cfg.orig_patch_image_size // self.cfg.patch_stride
        if gh * gw <= side * side:
            return pos
        ids = encoder_image_position_ids(side, side, self.cfg.image_bucket_size, pos.device)  # (side*side,)
        old = self.embed_image_positions(ids).view(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, s, s)
        new = F.interpolate(old, size=(gh, gw), mode="bilinear")  # (1, D, gh, gw)
        return new.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)

    def _rel_buckets(self, ids: Tensor | None, seq: int, device: torch.device, grid: tuple | None) -> Tensor:
        """Relative bucket ids (1|B, S, S) into each layer's `[image table; token table; zero row]`.

        Image x image pairs index the image table, text x text pairs the token table, image/text pairs
        the zero row. Depends only on the patch grid and the text length, so it is cached per
        (grid, length) unless the patches were sampled per sample (`grid` None).
        """
        key = (grid, seq, str(device))
        if grid is not None and key in self._bucket_cache:
            return self._bucket_cache[key]
        n_img_rows = self.image_rel_pos_table_list[0].num_embeddings
        zero_row = n_img_rows + self.token_rel_pos_table_list[0].num_embeddings
        pos = torch.arange(seq, device=device)
        text = token_buckets(self.token_rp_bucket, pos, pos) + n_img_rows  # (L, L)
        if ids is None:
            out = text[None]
        else:
            p = ids.size(1)
            out = torch.full((ids.size(0), p + seq, p + seq), zero_row, dtype=torch.long, device=device)
            out[:, :p, :p] = image_buckets(ids, ids, self.cfg.image_bucket_size)  # (1|B, P, P)
            out[:, p:, p:] = text
        if grid is not None:
            if len(self._bucket_cache) > 8:
                self._bucket_cache.clear()
            self._bucket_cache[key] = out
        return out

    def _layer_bias(self, abs_bias: Tensor, key_mask: Tensor | None, buckets: Tensor, idx: int) -> Tensor:
        """Shared abs bias + this layer's relative bias (+ key padding): (1|B, H, S, S)."""
        img, tok = self.image_rel_pos_table_list[idx].weight, self.token_rel_pos_table_list[idx].weight
        table = torch.cat([img, tok, img.new_zeros(1, img.size(1))])  # (N_img + N_tok + 1, H)
        bias = abs_bias + F.embedding(buckets, table).permute(0, 3, 1, 2)  # (1|B, H, S, S)
        return bias if key_mask is None else bias + key_mask

    def forward(self, src_tokens: Tensor, patch_images: Tensor | None = None, patch_masks: Tensor | None = None,
                sample_patch_num: int | None = None, return_hidden_states: bool = False) -> EncoderOut:
        """src_tokens (B,L) right-padded; patch_images (B,3,H,W); patch_masks (B,) False = text-only."""
        x, pos = self.embed_text(src_tokens)  # (B, L, D), (1, L, D)
        b, seq = src_tokens.shape
        pad = src_tokens.eq(self.padding_idx)  # (B, L)
        pos = self.pos_ln(pos)
        ids, grid = None, None
        if patch_images is not None:
            xi, pad_i, ids, pos_i, grid = self.embed_patches(patch_images, patch_masks, sample_patch_num)
            x, pad = torch.cat([xi, x], dim=1), torch.cat([pad_i, pad], dim=1)  # (B, S, D), (B, S)
            pos_i = self.image_pos_ln(pos_i)  # (1|B, P, D)
            pos = torch.cat([pos_i, pos.expand(pos_i.size(0), -1, -1)], dim=1)  # (1|B, S, D)
        x = x * (1 - pad[..., None].type_as(x))
        # positions are shared by the batch unless patches were sampled: the bias is then (1, H, S, S)
        abs_bias = position_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, self.heads, self.pos_scaling)
        buckets = self._rel_buckets(ids, seq, x.device, grid)  # (1|B, S, S)
        key_mask = key_padding_bias(pad, x.dtype)  # (B, 1, 1, S) or None
        states = [x] if return_hidden_states else None
        prompts = self.encoder_prompt_encoder(b) if self.encoder_prompt_encoder is not None else None
        for idx, layer in enumerate(self.layers):
            x = layer(x, self._layer_bias(abs_bias, key_mask, buckets, idx), None if prompts is None else prompts[idx])
            if states is not None:
                states.append(x)
        return EncoderOut(self.layer_norm(x), pad, pos.expand(b, -1, -1), states)
