"""Parameter-efficient fine-tuning (spec §8): which parameters train, what the model grows for them, and
what a checkpoint keeps.

`module.tuning` (the `tuning=` config group) picks a mode:
- `full`: every parameter trains (OFA's fine-tuning recipes; `module.freeze_embeddings` still applies);
- `prompt`: deep prompts of `prompt_length` in every encoder and decoder self-attention (OFA's
  `train_refcoco_prefix.sh`: length 100, no projection); everything else is frozen;
- `adapter`: a bottleneck adapter of `adapter_dim` after every layer's FFN; only the adapters train (the
  prompt-tuning paper's setting; OFA's `--adapter` alone also freezes just the token embeddings);
- `bitfit`: only the biases whose name contains `layer_norm` or `fc` train (OFA's `train.py --bitfit`).

With a mode other than `full` and a base checkpoint (`init_from`), a run's `.ckpt` holds only the tuned
parameters and the model's buffers plus `checkpoint["tuning"] = {"mode", "base"}`; reading it
(`ofa.checkpoint.read_checkpoint`, `init_from=`, `ckpt_path=`) loads the base and merges them back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig

MODES = ("full", "prompt", "adapter", "bitfit")
TUNING_KEY = "tuning"  # checkpoint["tuning"]: {"mode", "base"}


@dataclass
class TuningConfig:
    """`module.tuning` (conf/tuning/<mode>.yaml)."""

    mode: str = "full"  # full | prompt | adapter | bitfit
    prompt_length: int = 100  # prompt: prefix length (OFA: 100)
    encoder_prompt: bool = True  # prompt: prefixes in the encoder's self-attention layers
    decoder_prompt: bool = True  # prompt: ... and in the decoder's
    prompt_projection: bool = False  # prompt: reparameterise through an MLP (OFA: off in its script)
    prompt_dim: int = 0  # hidden width of that MLP (0 = 2 * d_model)
    adapter_dim: int = 100  # adapter: bottleneck width (OFA's script: 100)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RunConfigError(f"module.tuning.mode={self.mode!r} is not one of {list(MODES)}")


def tuned_config(cfg: OFAConfig, tuning: TuningConfig) -> OFAConfig:
    """The model config with what the mode adds: prompt encoders or adapters."""
    if tuning.mode == "prompt":
        return dataclasses.replace(
            cfg, encoder_prompt_length=tuning.prompt_length if tuning.encoder_prompt else 0,
            decoder_prompt_length=tuning.prompt_length if tuning.decoder_prompt else 0,
            prompt_projection=tuning.prompt_projection, prompt_dim=tuning.prompt_dim)
    if tuning.mode == "adapter":
        return dataclasses.replace(cfg, adapter_dim=tuning.adapter_dim)
    return cfg


def is_tuned(name: str, mode: str) -> bool:
    """Whether parameter `name` (fairseq names, as in `OFAModel.named_parameters()`) trains in `mode`."""
    if mode == "prompt":
        return "prompt_encoder." in name
    if mode == "adapter":
        return ".adapter." in name
    if mode == "bitfit":
        return name.endswith("bias") and ("layer_norm" in name or "fc" in name)
    return True


def freeze_for_tuning(model: nn.Module, mode: str) -> None:
    """`requires_grad` False for every parameter the mode does not train (no-op for `full`)."""
    if mode == "full":
        return
    for name, p in model.named_parameters():
        p.requires_grad_(is_tuned(name, mode))
    if not any(p.requires_grad for p in model.parameters()):
        raise RunConfigError(f"module.tuning.mode={mode} leaves no trainable parameter in this model")


def parameter_report(model: nn.Module, mode: str) -> str:
    """One line: trainable vs total parameters (the tied embedding counted once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"tuning={mode}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.3f}%)"


def tuned_state(state_dict: dict[str, Tensor], model: nn.Module, prefix: str = "model.") -> dict[str, Tensor]:
    """The entries of a module's `state_dict` a tuned checkpoint keeps: the trainable parameters and the
    buffers of `model` (batch-norm statistics move even when frozen), and every entry outside `prefix`."""
    trainable = {prefix + n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {prefix + n for n, _ in model.named_buffers()}
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix) or k in trainable or k in buffers}


def tuning_record(mode: str, base: str) -> dict:
    """`checkpoint["tuning"]`: the mode and the base checkpoint the tuned parameters go on (absolute path)."""
    return {"mode": mode, "base": str(Path(base).resolve())}


def base_of(checkpoint: dict) -> str | None:
    """The base checkpoint of a tuned checkpoint's content, None for a full one."""
    record = checkpoint.get(TUNING_KEY)
    return record.get("base") if isinstance(record, dict) else None


def is_tuning_addition(name: str) -> bool:
    """Whether a parameter exists only because of a tuning mode (prompt encoders, adapters): a base
    checkpoint lacks it and the model keeps its fresh initialisation."""
    return "prompt_encoder." in name or ".adapter." in name
