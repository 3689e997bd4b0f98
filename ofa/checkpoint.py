"""Import / export of OFA checkpoints: official fairseq `.pt`, the HF-transformers port, and ours.

Our module names are fairseq's (spec §6.2), so a fairseq state dict maps 1:1; the HF port differs only
in a few per-layer names (spec §6.3). Formats:

- `fairseq`: a `.pt` dict with `model`, `cfg` (OmegaConf) or `args` (Namespace), optional
  `extra_state["ema"]`. Unpickled by `ofa.safe_load.safe_torch_load`: only argparse / OmegaConf classes
  are allowed.
- `hf`: a directory (or weights file) with `config.json` and `pytorch_model.bin` or `model.safetensors`.
- `platform`: a directory with `model.safetensors` (fairseq names, tied embedding stored once) and
  `ofa_config.json` (`OFAConfig` fields), plus `tokenizer.json` when the source carried its vocabulary.
- `lightning`: a platform run's own `.ckpt` (`last.ckpt`, `best.ckpt`): `state_dict` under `model.`, its
  EMA in `ema`, and what rebuilds the model under `checkpoint["ofa"]` (written by `OFALitModule`, see
  `ofa.checkpoint_io.model_record`): the `OFAConfig` as a plain dict and the tokenizer (kind, path, sha256
  and the whole vocabulary as one `tokenizers` JSON text). Told apart from a fairseq `.pt` by its content.

Writers stage into a temp folder beside the target and rename it into place at the end, so a failed
export leaves no half-written folder. A checkpoint of another size than the model it is loaded into is
refused with one line naming both sizes.

CLI: `python -m ofa.checkpoint convert IN OUT [--ema] [--format platform|hf]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ofa.checkpoint_resize import fit_image_positions
from ofa.modules.config import PRESETS, OFAConfig
from ofa.modules.model import OFAModel
from ofa.safe_load import CheckpointError, safe_torch_load

PLATFORM_CONFIG, PLATFORM_WEIGHTS, TOKENIZER_FILE = "ofa_config.json", "model.safetensors", "tokenizer.json"
log = logging.getLogger(__name__)
RECORD_KEY = "ofa"  # the entry of a Lightning .ckpt holding the model config and the tokenizer
SIZE_FIELDS = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
               "encoder_ffn_dim", "decoder_ffn_dim", "resnet_blocks")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TIED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
DERIVED = re.compile(r"(^|\.)(version|token_rp_bucket|image_rp_bucket|image_position_idx)$")

# per-layer renames fairseq -> HF port (spec §6.3); everything else keeps its name
_LAYER_RENAMES = [("encoder", "attn_ln", "self_attn_mid_layer_norm"),
                  ("decoder", "self_attn_ln", "self_attn_mid_layer_norm"),
                  ("decoder", "encoder_attn", "cross_attn"),
                  ("decoder", "encoder_attn_layer_norm", "cross_attn_layer_norm"),
                  ("decoder", "cross_attn_ln", "cross_attn_mid_layer_norm"),
                  ("(?:en|de)coder", "ffn_layernorm", "ffn_layer_norm")]
_FS_TO_HF = [(rf"^({side}\.layers\.\d+)\.{fs}\.", rf"\1.{hf}.") for side, fs, hf in _LAYER_RENAMES]
_HF_TO_FS = [(rf"^({side}\.layers\.\d+)\.{hf}\.", rf"\1.{fs}.") for side, fs, hf in _LAYER_RENAMES]


@dataclass
class Checkpoint:
    """A state dict under our (fairseq) key names plus the config that builds the matching model."""

    state_dict: dict[str, Tensor]
    config: OFAConfig
    source: str = ""
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- key names
def _apply(rules: list[tuple[str, str]], key: str) -> str:
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def hf_to_fairseq_key(key: str) -> str:
    return _apply(_HF_TO_FS, key)


def fairseq_to_hf_key(key: str) -> str:
    return _apply(_FS_TO_HF, key)


# ------------------------------------------------------------------------------------------------ configs
_SHARED_FIELDS = (  # same name in fairseq args, the HF config and OFAConfig
    "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "resnet_type",
    "dropout", "attention_dropout", "activation_dropout", "encoder_drop_path_rate", "decoder_drop_path_rate",
    "resnet_drop_path_rate", "token_bucket_size", "image_bucket_size", "attn_scale_factor", "code_image_size",
    "layernorm_embedding", "patch_layernorm_embedding", "code_layernorm_embedding", "add_type_embedding",
    "entangle_position_embedding")
_FS_FIELDS = {  # fairseq arg -> OFAConfig field
    **{k: k for k in _SHARED_FIELDS + ("max_source_positions", "max_target_positions", "disable_entangle",
                                       "freeze_resnet")},
    "encoder_embed_dim": "d_model", "encoder_ffn_embed_dim": "encoder_ffn_dim",
    "decoder_ffn_embed_dim": "decoder_ffn_dim"}
_HF_FIELDS = {k: k for k in _SHARED_FIELDS + ("vocab_size", "d_model", "encoder_ffn_dim", "decoder_ffn_dim",
                                              "normformer", "pad_token_id", "bos_token_id", "eos_token_id")}


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise CheckpointError(f"unsupported OFA variant: {what}")


def config_from_fairseq(model_args: dict, state_dict: dict[str, Tensor]) -> OFAConfig:
    """OFAConfig from fairseq `cfg.model` / `args` (a plain dict); arch defaults fill what is absent.

    The vocabulary size, and the NormFormer flags when the args lack them, come from the state dict.
    """
    arch = model_args.get("_name") or model_args.get("arch") or "ofa_large"
    base = dict(PRESETS.get(arch, PRESETS["ofa_large"]))
    base.update({ours: model_args[fs] for fs, ours in _FS_FIELDS.items() if model_args.get(fs) is not None})
    if "resnet_type" in model_args:
        base["resnet_layers"] = None
    base["activation_dropout"] = model_args.get("activation_dropout") or model_args.get("relu_dropout") or 0.0
    has_c_attn = "encoder.layers.0.self_attn.c_attn" in state_dict
    scales = {bool(model_args.get(k, has_c_attn)) for k in ("scale_attn", "scale_fc", "scale_heads")}
    _require(len(scales) == 1, "scale_attn / scale_fc / scale_heads must be all on or all off")
    base["normformer"] = scales.pop()
    _require(not model_args.get("scale_resids", False), "--scale-resids")
    _require(model_args.get("encoder_normalize_before", True) and model_args.get("decoder_normalize_before", True),
             "post-LN (normalize_before=False)")
    _require(model_args.get("activation_fn", "gelu") == "gelu", f"activation {model_args.get('activation_fn')}")
    _require(model_args.get("no_scale_embedding", True), "scaled embeddings (no_scale_embedding=False)")
    _require(model_args.get("encoder_embed_dim", 0) == model_args.get("decoder_embed_dim", 0),
             "different encoder / decoder widths")
    vocab_size = _tied_embedding(state_dict).shape[0]
    return OFAConfig.from_dict({**base, "vocab_size": vocab_size})


def config_from_hf(hf: dict) -> OFAConfig:
    """OFAConfig from the HF port's `config.json` (the port never adds decoder positions)."""
    _require(not hf.get("scale_embedding", False), "scale_embedding=True")
    _require(hf.get("activation_function", "gelu") == "gelu", f"activation {hf.get('activation_function')}")
    d = {ours: hf[k] for k, ours in _HF_FIELDS.items() if k in hf and hf[k] is not None}
    if "max_position_embeddings" in hf:
        d["max_source_positions"] = d["max_target_positions"] = hf["max_position_embeddings"]
    return OFAConfig.from_dict({**d, "disable_entangle": True})


def config_to_hf(cfg: OFAConfig) -> dict:
    """HF port `config.json` for `cfg`."""
    _require(cfg.disable_entangle, "the HF port cannot express disable_entangle=False")
    _require(cfg.resnet_layers is None, "the HF port cannot express custom resnet_layers")
    _require(cfg.max_source_positions == cfg.max_target_positions, "different source / target max positions")
    d = {k: getattr(cfg, ours) for k, ours in _HF_FIELDS.items()}
    return {**d, "model_type": "ofa", "architectures": ["OFAModel"], "is_encoder_decoder": True,
            "max_position_embeddings": cfg.max_source_positions, "activation_function": "gelu",
            "scale_embedding": False, "encoder_normalize_before": True, "decoder_normalize_before": True,
            "share_decoder_input_output_embed": True, "decoder_start_token_id": cfg.bos_token_id,
            "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": cfg.init_std, "use_cache": True}


def _plain(obj) -> dict:
    """A Namespace / DictConfig / dict as a plain dict (values left as they are)."""
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(obj):
        return dict(obj)
    try:
        return OmegaConf.to_container(obj, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation pointing outside the saved config
        return OmegaConf.to_container(obj, resolve=False)


# ------------------------------------------------------------------------------------------------- readers
def _tied_embedding(sd: dict[str, Tensor]) -> Tensor:
    for key in TIED_KEYS:
        if key in sd:
            return sd[key]
    raise CheckpointError(f"no token embedding among {TIED_KEYS}")


def read_pickle(path: str | Path, ema: bool = False) -> Checkpoint:
    """A torch pickle, unpickled safely once: a platform run's Lightning `.ckpt` or an official fairseq `.pt`."""
    state = safe_torch_load(path)
    if isinstance(state, dict) and "state_dict" in state and "pytorch-lightning_version" in state:
        return lightning_checkpoint(state, path, ema)
    return fairseq_checkpoint(state, path, ema)


def read_fairseq(path: str | Path, ema: bool = False) -> Checkpoint:
    """An official fairseq OFA `.pt` (optionally its EMA weights)."""
    return fairseq_checkpoint(safe_torch_load(path), path, ema)


def fairseq_checkpoint(state: object, path: str | Path, ema: bool = False) -> Checkpoint:
    """The unpickled content of a fairseq `.pt` as a `Checkpoint` (optionally its EMA weights)."""
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: neither a fairseq checkpoint (no 'model' entry) nor a Lightning one")
    sd = dict(state["model"])
    if ema:
        extra = state.get("extra_state") or {}
        if "ema" not in extra:
            raise CheckpointError(f"{path}: --ema asked but the checkpoint has no extra_state['ema']")
        sd = {**dict(extra["ema"]), **dict(extra.get("ema_fp32_params") or {})}
    cfg = state.get("cfg")
    model_args = _plain(cfg["model"]) if cfg is not None and cfg.get("model") is not None else _plain(state.get("args"))
    return Checkpoint(sd, config_from_fairseq(model_args, sd), str(path), {"format": "fairseq", "ema": ema})


def lightning_checkpoint(state: dict, path: str | Path, ema: bool = False) -> Checkpoint:
    """A platform run's `.ckpt`: the model's weights (or its EMA) with the config and tokenizer the run
    stored under `checkpoint["ofa"]`; a `.ckpt` without that record cannot say which model it holds."""
    record = state.get(RECORD_KEY)
    if not isinstance(record, dict) or "model_config" not in record:
        raise CheckpointError(f"{path}: a Lightning checkpoint without the model config under "
                              f"checkpoint[{RECORD_KEY!r}] (not written by this platform's OFALitModule, or "
                              "before checkpoints carried it); resume it with ckpt_path= instead")
    sd = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    if ema:
        if "ema" not in state:
            raise CheckpointError(f"{path}: --ema asked but the run kept no EMA (module.ema.decay was 0)")
        sd.update(state["ema"])
    meta = {"format": "lightning", "ema": ema, "tokenizer": record.get("tokenizer")}
    base = (state.get("tuning") or {}).get("base")
    if base:  # a parameter-efficient run kept only its tuned weights: merge them onto its base (ofa.tuning)
        if not Path(base).exists():
            raise CheckpointError(f"{path}: holds only tuned weights; its base checkpoint {base} is missing")
        sd, meta["tuning"] = {**read_checkpoint(base).state_dict, **sd}, state["tuning"]
    return Checkpoint(sd, OFAConfig.from_dict(record["model_config"]), str(path), meta)


def text_sha256(text: str) -> str:
    """Content identity of a tokenizer JSON text (what checkpoints compare vocabularies by)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tokenizer_beside(folder: Path) -> dict | None:
    """The `tokenizer.json` a platform / HF folder carries, as a tokenizer record (None if absent)."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        return None
    text = path.read_text("utf-8")
    return {"kind": "trained", "path": str(path), "sha256": text_sha256(text), "json": text}


def _weights_file(path: Path, names: tuple[str, ...]) -> Path:
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path}: none of {names} found")


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return dict(safe_torch_load(path))


def read_hf(path: str | Path) -> Checkpoint:
    """The HF port's layout: `config.json` + `pytorch_model.bin` / `model.safetensors` (or a weights file)."""
    weights = _weights_file(Path(path), HF_WEIGHTS)
    sd = _read_weights(weights)
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    cfg = config_from_hf(json.loads((weights.parent / "config.json").read_text()))
    meta = {"format": "hf", "tokenizer": _tokenizer_beside(weights.parent)}
    return Checkpoint({hf_to_fairseq_key(k): v for k, v in sd.items()}, cfg, str(path), meta)


def read_platform(path: str | Path) -> Checkpoint:
    """Our format: `model.safetensors` + `ofa_config.json`."""
    weights = _weights_file(Path(path), (PLATFORM_WEIGHTS,))
    cfg = OFAConfig.from_dict(json.loads((weights.parent / PLATFORM_CONFIG).read_text()))
    meta = {"format": "platform", "tokenizer": _tokenizer_beside(weights.parent)}
    return Checkpoint(load_file(str(weights)), cfg, str(path), meta)


def detect_format(path: str | Path) -> str:
    """`platform` / `hf` (by the config file beside the weights) or `fairseq` (any other file: a torch
    pickle, read by `read_pickle` as a fairseq `.pt` or a platform run's Lightning `.ckpt`)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / PLATFORM_CONFIG).is_file():
        return "platform"
    if (folder / "config.json").is_file() and (p.is_dir() or p.suffix in (".bin", ".safetensors")):
        return "hf"
    if p.is_file():
        return "fairseq"
    if (p / "meta.pt").is_file():  # trainer=fsdp2 / fsdp: torch.distributed.checkpoint shards + Lightning's meta.pt
        raise CheckpointError(f"{path}: a sharded checkpoint folder; resume it with ckpt_path=, or make one file of "
                              f"it first: ofa-consolidate {path}")
    raise CheckpointError(f"{path}: not a checkpoint file or a directory with a config")


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """Read any supported format into our key names and an `OFAConfig`."""
    fmt = detect_format(path)
    if ema and fmt != "fairseq":
        raise CheckpointError(f"{path}: EMA weights exist only in fairseq .pt and Lightning .ckpt files")
    return {"fairseq": lambda: read_pickle(path, ema), "hf": lambda: read_hf(path),
            "platform": lambda: read_platform(path)}[fmt]()


# ------------------------------------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    resized_vocab: tuple[int, int] | None = None


def _resize_rows(old: Tensor, rows: int, d: int) -> Tensor:
    """Keep the first rows; new rows N(0, d^-0.5) as fairseq OFA's `upgrade_state_dict_named`."""
    new = torch.randn(rows, old.shape[1], dtype=old.dtype) * d**-0.5
    n = min(rows, old.shape[0])
    new[:n] = old[:n]
    return new


def _prepare(model: OFAModel, sd: dict[str, Tensor], resize_embeddings: bool) -> tuple[dict, tuple | None]:
    """Drop derived keys, fit the image positions to the model's bucket (`ofa.checkpoint_resize`), check the
    tie, fill all tied keys from one tensor, resize the vocab if asked."""
    sd = {k: v for k, v in sd.items() if not DERIVED.search(k)}
    sd, held_bucket = fit_image_positions(sd, model.cfg.image_bucket_size, model.cfg.init_std)
    if held_bucket is not None:
        log.info("image positions fitted from image_bucket_size=%d to %d", held_bucket, model.cfg.image_bucket_size)
    present = [sd[k] for k in TIED_KEYS if k in sd]
    if not present:
        return sd, None
    emb = present[0]
    if any(t.shape != emb.shape or not torch.equal(t, emb) for t in present[1:]):
        raise CheckpointError("the checkpoint's token embeddings / output projection are not tied")
    want, resized = model.cfg.vocab_size, None
    if emb.shape[0] != want:
        if not resize_embeddings:
            raise CheckpointError(f"vocabulary size differs: checkpoint {emb.shape[0]}, model {want} "
                                  "(pass resize_embeddings=True to resize)")
        emb, resized = _resize_rows(emb, want, model.cfg.d_model), (present[0].shape[0], want)
    return {**sd, **{k: emb for k in TIED_KEYS}}, resized


def load_state_dict(model: OFAModel, state_dict: dict[str, Tensor], strict: bool = True,
                    resize_embeddings: bool = False) -> LoadReport:
    """Load fairseq-named weights into `model`; raise on missing / unexpected keys unless strict=False."""
    sd, resized = _prepare(model, state_dict, resize_embeddings)
    expected = model.state_dict()
    for key in expected:  # FrozenBatchNorm2d checkpoints have no counters: not a weight
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = expected[key]
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected)
    bad_shape = sorted(k for k in sd if k in expected and sd[k].shape != expected[k].shape)
    if bad_shape:
        raise CheckpointError("shape mismatch: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad_shape[:10]))
    if strict and (missing or unexpected):
        raise CheckpointError(f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
                              f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} "
                              "(load with strict=False to accept random weights for the missing ones)")
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    return LoadReport(missing, unexpected, resized)


def size_of(cfg: OFAConfig) -> dict:
    """The fields that make a model's size (weights of two configs fit each other only if these agree)."""
    return {name: getattr(cfg, name) for name in SIZE_FIELDS}


def size_name(cfg: OFAConfig) -> str:
    """The preset of `cfg`'s size (`ofa_nano`, ...), or `a custom size`."""
    size = size_of(cfg)
    return next((name for name in PRESETS if size_of(OFAConfig.from_preset(name)) == size), "a custom size")


def describe_size(cfg: OFAConfig, other: OFAConfig) -> str:
    """`d_model=128, 2+2 layers`; when that equals `other`'s, also the other size fields that differ."""
    def short(c: OFAConfig) -> str:
        return f"d_model={c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers"

    extra = [f"{k}={getattr(cfg, k)}" for k in SIZE_FIELDS[3:] if getattr(cfg, k) != getattr(other, k)]
    return ", ".join([short(cfg), *extra]) if short(cfg) == short(other) else short(cfg)


def check_same_size(ckpt: Checkpoint, cfg: OFAConfig) -> None:
    """Refuse a checkpoint of another size than the model `cfg` builds, on one line naming both sizes
    (instead of a list of shape mismatches)."""
    held = ckpt.config
    if size_of(held) == size_of(cfg):
        return
    name = size_name(held)
    hint = f"; run with model={name}" if name in PRESETS else ""
    raise CheckpointError(f"{ckpt.source} holds {describe_size(held, cfg)} ({name}); this run builds "
                          f"{size_name(cfg)} ({describe_size(cfg, held)}){hint}")


def load_into_model(model: OFAModel, path: str | Path, ema: bool = False, strict: bool = True,
                    resize_embeddings: bool = False) -> LoadReport:
    """Load a checkpoint of any format into an existing model of the same size (its config decides the
    shapes; a different vocabulary is resized only if asked)."""
    ckpt = read_checkpoint(path, ema)
    check_same_size(ckpt, model.cfg)
    return load_state_dict(model, ckpt.state_dict, strict, resize_embeddings)


def load_model(path: str | Path, ema: bool = False, strict: bool = True, **overrides) -> OFAModel:
    """Build an `OFAModel` from a checkpoint's own config (with `overrides`) and load its weights."""
    ckpt = read_checkpoint(path, ema)
    cfg = OFAConfig.from_dict({**ckpt.config.to_dict(), **overrides})
    model = OFAModel(cfg)
    load_state_dict(model, ckpt.state_dict, strict=strict, resize_embeddings="vocab_size" in overrides)
    return model


# ------------------------------------------------------------------------------------------------- writers
def _model_state(model_or_sd: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    return {k: v.detach().cpu() for k, v in sd.items() if not DERIVED.search(k)}


@contextlib.contextmanager
def staged_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temp folder beside `out_dir` to write into; renamed to `out_dir` (replacing an existing folder)
    only when the block succeeds, removed when it fails: an export is whole or absent, never half-written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = out.with_name(f".{out.name}.{os.getpid()}.old") if out.exists() else None
        if old:
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old:
                os.replace(old, out)  # put the previous export back
            raise
        if old:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tokenizer(out: Path, tokenizer_json: str | None) -> None:
    if tokenizer_json is not None:
        (out / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")


def save_platform(model_or_sd: nn.Module | dict[str, Tensor], cfg: OFAConfig, out_dir: str | Path,
                  tokenizer_json: str | None = None) -> Path:
    """Write `model.safetensors` (tied embedding once) + `ofa_config.json` (+ `tokenizer.json` if given)."""
    sd = {k: v.contiguous() for k, v in _model_state(model_or_sd).items() if k not in TIED_KEYS[1:]}
    with staged_dir(out_dir) as tmp:
        save_file(sd, str(tmp / PLATFORM_WEIGHTS), metadata={"format": "pt", "ofa": "platform"})
        (tmp / PLATFORM_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n")
        _write_tokenizer(tmp, tokenizer_json)
    return Path(out_dir)


def export_hf(model_or_sd: nn.Module | dict[str, Tensor], cfg: OFAConfig, out_dir: str | Path,
              weights: str = "pytorch_model.bin", tokenizer_json: str | None = None) -> Path:
    """Write the HF port's layout: `config.json` + weights under the port's key names (tie stored 3x),
    + `tokenizer.json` if given. A config the port cannot express is refused before anything is written."""
    hf_config = json.dumps(config_to_hf(cfg), indent=2, sort_keys=True) + "\n"
    sd = _model_state(model_or_sd)
    emb = _tied_embedding(sd)
    sd = {fairseq_to_hf_key(k): v for k, v in sd.items()}
    sd.update({k: emb.clone() for k in TIED_KEYS})
    with staged_dir(out_dir) as tmp:
        if weights.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / weights), metadata={"format": "pt"})
        else:
            torch.save(sd, tmp / weights)
        (tmp / "config.json").write_text(hf_config)
        _write_tokenizer(tmp, tokenizer_json)
    return Path(out_dir)


def convert(src: str | Path, dst: str | Path, fmt: str = "platform", ema: bool = False,
            strict: bool = True) -> LoadReport:
    """Read any format, check it against a freshly built model, write `fmt` (`platform` or `hf`), with the
    source's `tokenizer.json` when it carries one (a run's `.ckpt`, a platform folder)."""
    if fmt not in ("platform", "hf"):
        raise CheckpointError(f"unknown output format {fmt!r} (platform | hf)")
    ckpt = read_checkpoint(src, ema)
    with torch.device("meta" if strict else "cpu"):  # strict: every weight is overwritten, skip the init
        model = OFAModel(ckpt.config)
    if strict:
        model.to_empty(device="cpu")
    report = load_state_dict(model, ckpt.state_dict, strict=strict)
    tokenizer_json = (ckpt.meta.get("tokenizer") or {}).get("json")
    if fmt == "platform":
        save_platform(model, ckpt.config, dst, tokenizer_json)
    else:
        export_hf(model, ckpt.config, dst, tokenizer_json=tokenizer_json)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-convert-checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a fairseq / HF-port / platform checkpoint")
    conv.add_argument("src", help="fairseq .pt, a run's Lightning .ckpt, HF directory or weights file, "
                                  "or platform directory")
    conv.add_argument("dst", help="output directory")
    conv.add_argument("--ema", action="store_true",
                      help="take the EMA weights (fairseq extra_state['ema'], a run's checkpoint['ema'])")
    conv.add_argument("--format", choices=("platform", "hf"), default="platform")
    conv.add_argument("--no-strict", action="store_true", help="accept missing / unexpected keys")
    args = parser.parse_args(argv)
    try:
        report = convert(args.src, args.dst, args.format, args.ema, strict=not args.no_strict)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.format} checkpoint to {args.dst} "
          f"(missing {len(report.missing)}, unexpected {len(report.unexpected)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
