"""`OFAModel`: the OFA encoder-decoder with tied embeddings (fairseq state-dict names)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ofa.modules.attention import MultiheadAttention
from ofa.modules.config import OFAConfig
from ofa.modules.decoder import DecoderCache, OFADecoder
from ofa.modules.encoder import EncoderOut, OFAEncoder


class OFAModel(nn.Module):
    """OFA (spec §1). `state_dict()` keys equal fairseq's, so official `.pt` weights load unrenamed.

    Meta-device construction (FSDP): build under `torch.device("meta")`, then
    `model.to_empty(device=...)` and `model.reset_parameters()` (or load a checkpoint and call
    `model.reset_buffers()`).
    """

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.encoder = OFAEncoder(cfg, embed_tokens)
        self.decoder = OFADecoder(cfg, embed_tokens)
        self.reset_parameters()

    def tie_weights(self) -> None:
        """One token embedding for the encoder, the decoder input and the output projection."""
        self.decoder.embed_tokens = self.encoder.embed_tokens
        self.decoder.output_projection.weight = self.encoder.embed_tokens.weight

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        # `to_empty` / a device or dtype change may give the tied parameter two new copies: re-tie
        super()._apply(fn, recurse)
        self.tie_weights()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OFA's init: BERT N(0, init_std) for Linear / Embedding (padding row 0), kaiming convs, norms 1/0.

        Also recomputes the derived buffers, so `to_empty(device=...)` + `reset_parameters()` after a
        meta-device build gives a usable model.
        """
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.reset_parameters()
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.Linear, nn.Embedding)) and m is not self.decoder.output_projection:
                m.weight.normal_(0.0, std)  # (the output projection is the tied embedding)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
            if isinstance(m, MultiheadAttention) and m.c_attn is not None:
                m.c_attn.fill_(1.0)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute the derived (non-persistent) buffers: bucket table, decoder image position ids."""
        self.encoder.reset_buffers()
        self.decoder.reset_buffers()

    def compile_decoding(self, **options: Any) -> None:
        """`torch.compile` the cached decoder step (`decode` with a cache: every step of generation); the
        teacher-forced `decode` and `forward` stay as they are. `options` are `torch.compile`'s; `dynamic`
        defaults to True (rows shrink as samples finish, the cache grows by one position per step), so a
        generate call compiles a few variants (cache length 0, 1, >= 2, and a single live row: dynamo
        specialises sizes 0 and 1), not one per step. The compiled wrapper is kept out of the module tree
        (no new parameter names or state-dict keys)."""
        self.__dict__["_compiled_step"] = torch.compile(self.decoder, **{"dynamic": True, **options})

    def new_cache(self) -> DecoderCache:
        """An empty incremental-decoding cache for `decode`."""
        return DecoderCache(len(self.decoder.layers))

    def encode(self, src_tokens: Tensor, patch_images: Tensor | None = None, patch_masks: Tensor | None = None,
               sample_patch_num: int | None = None) -> EncoderOut:
        """Encode `[image patches ; text]`; patch_masks False = text-only sample (patches masked)."""
        return self.encoder(src_tokens, patch_images, patch_masks, sample_patch_num)

    def decode(self, prev_output_tokens: Tensor, encoder_out: EncoderOut, code_masks: Tensor | None = None,
               cache: DecoderCache | None = None, target_positions: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (R,T,V), or (N,V) at `target_positions` (N,) of the R*T flattened positions; with a
        cache, the full prefix goes in and (R,1,V) comes out.

        `encoder_out` has R rows, or R / G rows each serving G consecutive target rows (beams).
        """
        step = self.__dict__.get("_compiled_step") if cache is not None else None
        if step is None:
            return self.decoder(prev_output_tokens, encoder_out, code_masks, cache, target_positions)
        cache.bind(encoder_out)  # eagerly: its object-identity branches would each be a compiled variant
        return step(prev_output_tokens, encoder_out, code_masks, cache)

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor, patch_images: Tensor | None = None,
                patch_masks: Tensor | None = None, code_masks: Tensor | None = None,
                sample_patch_num: int | None = None, target_positions: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) for teacher forcing; with `target_positions` (N,), indices into the B*T flattened decoder
        positions, only those positions' logits (N, V): the output projection (and its gradient) for the tokens a loss
        reads, not for every prompt position (`ofa.tasks.losses.target_positions`)."""
        enc = self.encode(src_tokens, patch_images, patch_masks, sample_patch_num)
        return self.decode(prev_output_tokens, enc, code_masks, target_positions=target_positions)


def count_parameters(cfg: OFAConfig) -> int:
    """Number of distinct parameters (tied embedding counted once), built on the meta device."""
    with torch.device("meta"):
        model = OFAModel(cfg)
    return sum(p.numel() for p in model.parameters())
