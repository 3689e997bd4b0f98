"""Optimiser and learning-rate schedule of OFA's recipes (spec §5).

fairseq `adam` with decoupled weight decay (= AdamW) and `polynomial_decay`: linear warmup from 0 to the
peak lr over `warmup_steps` (or `warmup_ratio` × total steps), then decay as
`(lr - end_lr) * (1 - progress) ** power + end_lr` (power 1 in every recipe: linear).
Unlike fairseq, no weight decay on biases, norms and embeddings (the usual transformer practice).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ofa.errors import check_values

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclass
class OptimConfig:
    """AdamW hyper-parameters (`optim/*.yaml`)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    # module name -> lr multiplier of its parameters, e.g. {image_proj: 0.1, decoder: 0.3}: a key matches the
    # parameters whose dotted name contains it as whole components; the longest matching key wins
    lr_scale: Dict[str, float] = field(default_factory=dict)  # noqa: UP006 - OmegaConf needs typing.Dict
    # 0: the multipliers hold for the whole run; N > 0: each moves linearly to 1 over the first N optimizer steps
    # (applied by `build_scheduler`)
    lr_scale_steps: int = 0
    # AdamW's implementation: None (auto) = the fused kernel when every parameter is on the CPU, else PyTorch's
    # default; True / False force it on / off (see `adamw_kernel`)
    fused: Optional[bool] = None  # noqa: UP045 - OmegaConf needs typing.Optional

    def __post_init__(self) -> None:
        """Refuse values AdamW cannot use, at start and on one line (`config error: optim.lr=-1.0: ...`)."""
        check_values([("optim.lr", self.lr, self.lr > 0, "must be > 0"),
                      ("optim.betas", list(self.betas), len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                       "must be two numbers in [0, 1)"),
                      ("optim.eps", self.eps, self.eps > 0, "must be > 0"),
                      ("optim.weight_decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0"),
                      ("optim.lr_scale_steps", self.lr_scale_steps, self.lr_scale_steps >= 0, "must be >= 0"),
                      *((f"optim.lr_scale.{k}", v, v > 0, "must be > 0") for k, v in self.lr_scale.items())])


@dataclass
class ScheduleConfig:
    """Polynomial decay with linear warmup (`schedule/*.yaml`); `warmup_steps` wins over `warmup_ratio`."""

    warmup_steps: int = 0
    warmup_ratio: float = 0.06
    end_lr: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        """Refuse a schedule that cannot run, at start and on one line."""
        check_values([("schedule.warmup_steps", self.warmup_steps, self.warmup_steps >= 0, "must be >= 0"),
                      ("schedule.warmup_ratio", self.warmup_ratio, 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
                      ("schedule.end_lr", self.end_lr, self.end_lr >= 0, "must be >= 0"),
                      ("schedule.power", self.power, self.power >= 0, "must be >= 0 (0: constant after warmup)")])


def lr_multiplier(name: str, lr_scale: dict[str, float]) -> float:
    """The multiplier of the longest key of `lr_scale` found in `name` as whole dotted components (else 1.0):
    `image_proj` matches `encoder.image_proj.weight`, not `encoder.image_projection.weight`."""
    matches = [key for key in lr_scale if f".{key}." in f".{name}."]
    return lr_scale[max(matches, key=len)] if matches else 1.0


def param_groups(model: nn.Module, weight_decay: float, lr: float, lr_scale: dict[str, float] | None = None
                 ) -> list[dict]:
    """Trainable parameters grouped by (decayed or not, lr multiplier): matrices are decayed; biases, norms and
    embeddings are not. Each group's `lr` is its peak lr (the schedule multiplies it). The unscaled groups come
    first (decayed, then not), so group 0's lr is the run's `optim.lr` schedule (logged as `train/lr`)."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_MODULES) or name.endswith("bias") or p.ndim < 2:
                no_decay.add(id(p))
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (id(p) not in no_decay, lr_multiplier(name, lr_scale or {}))
            groups.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, not kv[0][0], kv[0][1]))]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_scale)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **adamw_kernel(groups, cfg.fused))


def adamw_kernel(groups: list[dict], fused: bool | None) -> dict:
    """AdamW's implementation keyword: `{"fused": True}` or `{}` (PyTorch's default: foreach on CUDA, else a
    Python loop over the tensors).

    Auto (None) fuses when every parameter is a floating-point CPU tensor: PyTorch only picks a multi-tensor
    implementation by itself on accelerators, and on the CPU its per-tensor loop costs ofa_tiny (405 tensors,
    33M parameters) 280-380 ms per step where the fused kernel takes 50-80 ms (2 threads; experiments/README.md,
    issue 12). Not on by default elsewhere: Lightning refuses gradient clipping with a fused optimizer under its
    mixed-precision plugins (`trainer=gpu` is bf16-mixed with clipping); `optim.fused=true` forces it.
    """
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)
    return {"fused": True} if fused else {}


def polynomial_factor(step: int, total: int, warmup: int, peak: float, end: float, power: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if step >= total or total <= warmup:
        return end / peak
    progress = (step - warmup) / (total - warmup)
    return ((peak - end) * (1 - progress) ** power + end) / peak


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                    lr_scale_steps: int = 0) -> LambdaLR:
    """Per-step LambdaLR; `total_steps` is the trainer's estimated number of optimizer steps. With
    `lr_scale_steps` N > 0 (`optim.lr_scale_steps`), a group built with an lr multiplier s (its lr / the
    optimizer's lr, `param_groups`) has it moved from s to 1 over the first N steps, on top of the schedule."""
    warmup = cfg.warmup_steps or int(round(cfg.warmup_ratio * total_steps))
    peak = optimizer.defaults["lr"]

    def factor(step: int) -> float:
        return polynomial_factor(step, total_steps, warmup, peak, cfg.end_lr, cfg.power)

    def group_factor(scale: float, steps: int) -> Callable[[int], float]:
        if steps <= 0 or scale == 1.0:
            return factor
        return lambda step: factor(step) * (scale + (1 - scale) * min(1.0, step / steps)) / scale

    return LambdaLR(optimizer, [group_factor(g["lr"] / peak, lr_scale_steps) for g in optimizer.param_groups])
