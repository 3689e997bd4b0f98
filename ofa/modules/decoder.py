"""OFA decoder with an incremental key/value cache."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ofa.modules.attention import fold_rows, key_padding_bias, split_heads
from ofa.modules.config import OFAConfig
from ofa.modules.encoder import EncoderOut
from ofa.modules.layers import DecoderLayer
from ofa.modules.position import decoder_image_position_idx, image_buckets, rel_pos_tables, token_bucket_table
from ofa.modules.position import token_buckets
from ofa.modules.prompt import PromptEncoder
from ofa.modules.workspace import Workspace


class DecoderCache:
    """Incremental-decoding state of `OFADecoder`.

    - per target row: each layer's self-attention k/v (growing by one step per call), and the position
      keys of the steps so far (`static`; one row when shared by the whole batch);
    - per encoder row: each layer's cross-attention k/v and the encoder's position keys / key mask,
      computed once for the `EncoderOut` last passed to `decode` (`enc`); a different `EncoderOut`
      reorders them when it was selected from that one (`EncoderOut.index_select`), else recomputes them.

    `index_select(order)` reorders the per-target-row state in place (beam search) and returns the
    cache; the encoder side follows the `EncoderOut` given to the next call.

    With `reuse_logits` (`SequenceGenerator` sets it), the logits a cached call returns are written into one
    buffer of the cache's `Workspace` (ofa/modules/workspace.py: why): the next call with the same cache
    overwrites them.
    """

    def __init__(self, num_layers: int, reuse_logits: bool = False) -> None:
        self.reuse_logits = reuse_logits
        self.layers: list[dict[str, dict[str, Tensor]]] = [{"self": {}, "cross": {}} for _ in range(num_layers)]
        self.static: dict[str, Tensor] = {}  # per target row (or one row shared by all rows)
        self.encoder: dict[str, Tensor] = {}  # per encoder row (or one shared row), derived from `enc`
        self.enc: EncoderOut | None = None
        self.work = Workspace()  # the logits of the last call, with reuse_logits

    @property
    def length(self) -> int:
        """Number of target positions already cached."""
        k = self.layers[0]["self"].get("k") if self.layers else None
        return 0 if k is None else k.size(2)

    def index_select(self, order: Tensor) -> DecoderCache:
        for d in [self.static] + [layer["self"] for layer in self.layers]:
            for key, value in d.items():
                d[key] = value if value.size(0) == 1 else value.index_select(0, order)
        return self

    def bind(self, enc: EncoderOut) -> None:
        """Make the encoder-side state follow `enc` (reorder it, or drop it to be recomputed)."""
        if enc is self.enc:
            return
        parent = enc.source[0]() if enc.source is not None else None
        dicts = [self.encoder] + [layer["cross"] for layer in self.layers]
        for d in dicts:
            if parent is None or parent is not self.enc:
                d.clear()
            else:
                for key, value in d.items():
                    keep = value is None or value.size(0) == 1  # None: no key mask; one row: shared
                    d[key] = value if keep else value.index_select(0, enc.source[1])
        self.enc = enc


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
                         rate, cfg.attn_scale_factor, cfg.normformer, cfg.adapter_dim) for rate in rates)
        self.layer_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False, device="meta")
        self.output_projection.weight = embed_tokens.weight  # tied (no storage of its own)
        self.token_rel_pos_table_list = rel_pos_tables(cfg.decoder_layers, 2 * cfg.token_bucket_size - 1, h)
        self.image_rel_pos_table_list = rel_pos_tables(cfg.decoder_layers, (2 * ib - 1) ** 2 + 3, h)
        self.decoder_prompt_encoder = PromptEncoder(
            cfg.decoder_prompt_length, cfg.decoder_layers, d, h, cfg.prompt_projection, cfg.prompt_dim,
            cfg.prompt_dropout) if cfg.decoder_prompt_length else None
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

    def _self_pos_bias(self, pos: Tensor, cache: DecoderCache | None) -> Tensor:
        """Abs-position bias of the new positions `pos` (1|B,n,D) to all positions so far: (1|B, H, n, T)."""
        k = split_heads(self.self_pos_k_linear(pos), self.heads)  # (1|B, H, n, hd)
        if cache is not None:  # keys of earlier positions come from the cache
            prev = cache.static.get("self_pos_k")
            if prev is not None:
                rows = max(prev.size(0), k.size(0))
                k = torch.cat([prev.expand(rows, -1, -1, -1), k.expand(rows, -1, -1, -1)], 2)  # (1|B, H, T, hd)
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

    def _self_mask(self, tokens: Tensor, start: int) -> Tensor | None:
        """Causal + pad-key mask (B|1,1,n,T) as an additive float, None when empty; a position sees itself.
        Under `torch.compile` always the mask (zeros when empty: the same sums), so that no data-dependent
        branch splits the compiled graph."""
        t = tokens.size(1)
        pad = tokens.eq(self.padding_idx)  # (B, T)
        if t - start == 1 and not torch.compiler.is_compiling() and not bool(pad.any()):  # nothing to mask
            return None
        q = torch.arange(start, t, device=tokens.device)[:, None]
        k = torch.arange(t, device=tokens.device)[None, :]
        masked = (k > q) | (pad[:, None, :] & (k != q))  # (B, n, T)
        zeros = torch.zeros(masked.shape, dtype=torch.float32, device=tokens.device)
        return zeros.masked_fill(masked, float("-inf"))[:, None]

    def _rel_buckets(self, start: int, t: int, code: Tensor | None,
                     device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Token and (with code samples) image relative bucket ids of query rows start..t-1: (n, T) each."""
        q, k = torch.arange(start, t, device=device), torch.arange(t, device=device)
        token = token_buckets(self.token_rp_bucket, q, k)  # (n, T)
        if code is None:
            return token, None
        ids = self.image_position_idx[:t]
        return token, image_buckets(ids[start:], ids, self.cfg.image_bucket_size)  # (n, T)

    def _rel_bias(self, idx: int, buckets: tuple[Tensor, Tensor | None], code: Tensor | None) -> Tensor:
        """This layer's relative bias for the new query rows: (1|B, H, n, T)."""
        token, image = buckets
        rel = F.embedding(token, self.token_rel_pos_table_list[idx].weight).permute(2, 0, 1)[None]  # (1, H, n, T)
        if code is not None:
            img = F.embedding(image, self.image_rel_pos_table_list[idx].weight).permute(2, 0, 1)[None]
            rel = torch.where(code[:, None, None, None], img, rel)
        return rel

    def _cross_bias(self, q_pos: Tensor, enc: EncoderOut, rows: int, cache: DecoderCache | None) -> Tensor:
        """Abs-position bias to the encoder positions + encoder padding, in `fold_rows` layout: (B|1, H, G*n, S)."""
        state = cache.encoder if cache is not None else {}
        if "cross_pos_k" not in state:
            pe = enc.position_embeddings  # (B, S, D), usually one row expanded over the batch
            pe = pe[:1] if pe.stride(0) == 0 else pe
            state["cross_pos_k"] = split_heads(self.cross_pos_k_linear(pe), self.heads).transpose(2, 3)
            state["key_mask"] = key_padding_bias(enc.padding_mask, pe.dtype)  # (B, 1, 1, S) or None
        q = split_heads(self.cross_pos_q_linear(q_pos) * self.pos_scaling, self.heads)  # (1|R, H, n, hd)
        group = rows // enc.hidden.size(0)
        if group > 1:
            q = fold_rows(q.expand(rows, -1, -1, -1), group)  # (B, H, G*n, hd)
        bias = q @ state["cross_pos_k"]  # (1|B, H, G*n, S)
        return bias if state["key_mask"] is None else bias + state["key_mask"]

    def extract_features(self, tokens: Tensor, enc: EncoderOut, code_masks: Tensor | None = None,
                         cache: DecoderCache | None = None,
                         return_hidden_states: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """Hidden states after the final layer norm for the positions not yet cached: (R, n, D).

        `tokens` may have G times as many rows as `enc` (R = B * G): encoder row b then serves target
        rows b*G .. b*G+G-1 (the beams of one sample), without repeating the encoder output.
        """
        rows, t = tokens.shape
        if rows % enc.hidden.size(0):
            raise ValueError(f"{rows} target rows for {enc.hidden.size(0)} encoder rows: not a multiple")
        start = 0 if cache is None else cache.length
        if start >= t:
            raise ValueError(f"cache already holds {start} positions; got a prefix of length {t}")
        if cache is not None:
            cache.bind(enc)
        code = code_masks.to(torch.bool) if code_masks is not None and bool(code_masks.any()) else None
        raw_pos, pos = self._positions(start, t, code, tokens.device)  # (1|B, n, D)
        self_abs = self._self_pos_bias(pos, cache)  # (1|B, H, n, T)
        mask = self._self_mask(tokens, start)
        self_abs = self_abs if mask is None else self_abs + mask  # (1|B, H, n, T)
        cross = self._cross_bias(pos, enc, rows, cache)  # (B|1, H, G*n, S)
        buckets = self._rel_buckets(start, t, code, tokens.device)
        x = self._embed(tokens[:, start:], raw_pos, code)  # (B, n, D)
        states = [x] if return_hidden_states else None
        prompts = self.decoder_prompt_encoder(rows) if self.decoder_prompt_encoder is not None else None
        for idx, layer in enumerate(self.layers):
            self_bias = self_abs + self._rel_bias(idx, buckets, code)
            x = layer(x, enc.hidden, self_bias, cross, None if cache is None else cache.layers[idx],
                      None if prompts is None else prompts[idx])
            if states is not None:
                states.append(x)
        return self.layer_norm(x), states

    def forward(self, tokens: Tensor, enc: EncoderOut, code_masks: Tensor | None = None,
                cache: DecoderCache | None = None, target_positions: Tensor | None = None) -> Tensor:
        """Logits (B,T,V) without a cache, or only at `target_positions` (N,) of the B*T flattened positions, (N,V):
        the tokens a training loss reads; with a cache only the last position's, (B,1,V)."""
        x, _ = self.extract_features(tokens, enc, code_masks, cache)  # (B, n, D)
        if target_positions is not None:
            if cache is not None:
                raise ValueError("target_positions is for teacher forcing: not with a cache")
            return self.output_projection(x.flatten(0, 1).index_select(0, target_positions))  # (N, V)
        if cache is None:
            return self.project(x)
        x = x[:, -1]  # (R, D)
        weight = self.output_projection.weight  # (V, D)
        if not cache.reuse_logits or torch.is_grad_enabled() or torch.compiler.is_compiling() \
                or torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype:
            return self.project(x[:, None])
        out = cache.work.get("logits", (x.size(0), 1, weight.size(0)), x.dtype, x.device)  # (R, 1, V)
        project_rows(x, weight, out=out.view(x.size(0), -1), work=cache.work)
        return out

    def project(self, x: Tensor) -> Tensor:
        """Output projection (R, n, D) -> logits (R, n, V); without autograd in the form `projection_form` picks."""
        if torch.is_grad_enabled():
            return self.output_projection(x)
        r, n, d = x.shape
        return project_rows(x.reshape(r * n, d), self.output_projection.weight).view(r, n, -1)


def project_rows(x: Tensor, weight: Tensor, out: Tensor | None = None, work: Workspace | None = None) -> Tensor:
    """x (N, D) @ weight (V, D)^T -> logits (N, V) without autograd, in the form `projection_form` picks; into `out`
    (N, V) when given, with the flipped form's (V, N) product in `work`'s buffer "logits_t" when given."""
    form = projection_form(x)
    if form == "flipped":
        buf = None if work is None else work.get("logits_t", (weight.size(0), x.size(0)), x.dtype, x.device)
        flipped = torch.mm(weight, x.t(), out=buf)  # (V, N)
        return flipped.t().contiguous() if out is None else out.copy_(flipped.t())
    if form in ("onednn", "packed"):
        logits = onednn_linear(x, packed_weight(weight) if form == "packed" else weight)
        return logits if out is None else out.copy_(logits)
    return torch.mm(x, weight.t(), out=out)


def onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (N, D) @ weight (V, D)^T by oneDNN's linear (CPU, float32; only where `ONEDNN_LINEAR`); `weight` may be
    the plain tensor or its `packed_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> ((data_ptr, version), oneDNN's blocked copy)
PACK_ROWS = 64  # the row count oneDNN picks the blocked layout for; the copy serves any number of rows


def packed_weight(weight: Tensor) -> Tensor:
    """oneDNN's blocked copy of `weight` (V, D) for its linear: made on the first call and again after the weight
    changes (its storage or its version counter, which every in-place update bumps: an optimizer step, a loaded
    state dict), kept while the weight lives. Without it oneDNN converts the plain weight on every call: the
    59457 x 256 output projection of 8 rows took 7.8 ms packed against 13.1 ms plain (experiments/README.md,
    "A packed copy of the output projection's weight"). Costs one more tensor of the weight's size, and one packing
    per weight version (48 ms at 59457 x 256, 290 ms at 59457 x 1024 on a 2-core AMD EPYC): a CPU run that updates
    the weight between every few generation calls (SCST) packs that often. A weight made under
    `torch.inference_mode` has no version counter: it is used as it is (oneDNN's linear takes either)."""
    if weight.is_inference():
        return weight
    key = (weight.data_ptr(), weight._version)
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != key:
        entry = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS))
        _PACKED[weight] = entry
    return entry[1]


def projection_form(x: Tensor) -> str:
    """How to compute the output projection of these rows (N, D) without autograd: `x @ W^T` ("straight"),
    `(W @ x^T)^T` ("flipped"), oneDNN's linear ("onednn") or oneDNN's linear with its blocked copy of the weight
    ("packed"): the same float32 products, summed in other orders.

    On CPU MKL's GEMM with the 59k-row weight is slow for few rows: flipped is 1.25x (Xeon) to 1.8x (AMD EPYC, copy
    included) faster for 2-8 rows. oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, an op of PyTorch's oneDNN
    integration, where the build has it) is 2.3x faster than `x @ W^T` for one row; with the weight packed once
    (`packed_weight`) it is 1.2-1.7x faster than the best other form for 8 rows and 1.1-1.4x for 40 (beam 5 of a
    batch of 8) at d_model 128-1024, 1.5-2x faster than `x @ W^T` for 50-1000 rows (an evaluation batch's beams), and
    about even for one row, which keeps the plain weight (no extra copy for single-image decoding).
    (`experiments/README.md`: "The output projection of a few rows", "oneDNN's linear for the output projection",
    "A packed copy of the output projection's weight"; `experiments/projection_kernels.py` times the forms on any
    CPU.)"""
    if x.device.type != "cpu":
        return "straight"
    rows = x.size(0)
    onednn = x.dtype == torch.float32 and ONEDNN_LINEAR and not torch.is_autocast_enabled("cpu")
    if onednn and rows == 1:
        return "onednn"
    if onednn and PACKED_LINEAR and not torch.compiler.is_compiling():
        return "packed"
    if 2 <= rows <= 8:
        return "flipped"
    return "onednn" if onednn and rows <= 100 else "straight"


ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
PACKED_LINEAR = ONEDNN_LINEAR and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
