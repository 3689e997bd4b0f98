"""Exponential moving average of the weights (OFA's VQA recipe: decay 0.9999, fp32, used for evaluation)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """fp32 shadow copy of the trainable parameters, updated after each optimizer step.

    `apply_to(model)` puts the averaged weights into the model for evaluation, `restore(model)` undoes it.
    The state dict travels in the Lightning checkpoint (`checkpoint["ema"]`).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, start_step: int = 0) -> None:
        self.decay, self.start_step = decay, start_step
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }
        self._backup: dict[str, Tensor] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = 0.0 if step < self.start_step else self.decay  # before start: track the weights
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Put the averaged weights into `model` (for evaluation), keeping its own for `restore`."""
        params = dict(model.named_parameters())
        self._backup = {name: params[name].detach().clone() for name in self.shadow}
        for name, value in self.shadow.items():
            params[name].copy_(value)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Undo `apply_to` (no-op if nothing is applied)."""
        params = dict(model.named_parameters())
        for name, value in (self._backup or {}).items():
            params[name].copy_(value)
        self._backup = None

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    def to(self, device: torch.device) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self
