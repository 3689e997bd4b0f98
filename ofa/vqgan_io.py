"""Read and write taming-transformers Gumbel VQGAN bundles: `model.yaml` + `last.ckpt` (spec §7).

OFA's image-generation bundle ships `vqgan/model.yaml` and `vqgan/last.ckpt`; taming's released folders hold
`configs/model.yaml` and `checkpoints/last.ckpt`. Both layouts load. The checkpoint is a Lightning 1.x
`.ckpt`, read with `torch.load(weights_only=True)`: besides tensors and plain containers it may name a few
Lightning classes (the `callbacks` dict is keyed by the `ModelCheckpoint` class), which unpickle as inert
placeholders, by name; any other global is refused, unrun (`ofa.safe_load`). `save_vqgan` writes a bundle that
both `load_vqgan` and taming's `GumbelVQ(ckpt_path=...)` read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig
from ofa.safe_load import CheckpointError, safe_torch_load

TARGET = "taming.models.vqgan.GumbelVQ"
LOSS_TARGET = "taming.modules.losses.vqperceptual.DummyLoss"  # no discriminator or LPIPS weights to ship
BASE_LEARNING_RATE = 4.5e-06  # taming's value; only its training reads it
LAYOUTS = (("model.yaml", "last.ckpt"), ("configs/model.yaml", "checkpoints/last.ckpt"))
# GumbelVQ's arguments; all but the first five are about training or logging (a `remap` is refused)
KNOWN_PARAMS = {"ddconfig", "n_embed", "embed_dim", "kl_weight", "temperature_scheduler_config", "lossconfig",
                "monitor", "image_key", "ckpt_path", "ignore_keys", "colorize_nlabels", "remap"}


class LightningPlaceholder:
    """Stands in for a Lightning class named in a checkpoint (a callback class keys the `callbacks` dict): no
    behaviour, nothing of Lightning imported."""


def _placeholder(name: str) -> type:
    return type(name.rsplit(".", 1)[1], (LightningPlaceholder,), {})


LIGHTNING_GLOBALS: dict[str, type] = {  # the only Lightning names a taming checkpoint may contain
    **{name: _placeholder(name) for name in ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                                             "pytorch_lightning.callbacks.early_stopping.EarlyStopping")},
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,  # saved hyper-parameters: a plain dict
}


def find_bundle(path: str | Path) -> tuple[Path, Path]:
    """(model.yaml, last.ckpt) of a bundle directory, or of a `.ckpt` file with its yaml beside it (or in
    `../configs/` for taming's `checkpoints/` folder)."""
    path = Path(path)
    if path.is_dir():
        for yaml, ckpt in LAYOUTS:
            if (path / yaml).is_file() and (path / ckpt).is_file():
                return path / yaml, path / ckpt
        raise FileNotFoundError(f"{path}: no model.yaml + last.ckpt (nor configs/model.yaml + checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or directory")
    for yaml in (path.parent / "model.yaml", path.parent.parent / "configs" / "model.yaml"):
        if yaml.is_file():
            return yaml, path
    raise FileNotFoundError(f"{path}: no model.yaml beside it (nor in ../configs/)")


def read_config(yaml_path: str | Path) -> VQGANConfig:
    """`VQGANConfig` of a taming `model.yaml` whose `model.target` is a Gumbel VQ (taming's, or a vendored copy
    such as OFA's `models.taming.models.vqgan.GumbelVQ`)."""
    cfg = OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=True)
    model = (cfg.get("model") if isinstance(cfg, dict) else None) or {}
    target = str(model.get("target"))
    if target.rsplit(".", 1)[-1] != "GumbelVQ":
        raise CheckpointError(f"{yaml_path}: model.target is {target}, not a Gumbel VQGAN ({TARGET})")
    params = model.get("params") or {}
    absent = [k for k in ("ddconfig", "n_embed", "embed_dim") if params.get(k) is None]
    if absent:
        raise CheckpointError(f"{yaml_path}: model.params lacks {', '.join(absent)}")
    unknown = sorted(set(params) - KNOWN_PARAMS)
    if unknown or params.get("remap") is not None:
        raise CheckpointError(f"{yaml_path}: unsupported GumbelVQ params: {', '.join(unknown or ['remap'])}")
    values = dict(params["ddconfig"], n_embed=params["n_embed"], embed_dim=params["embed_dim"],
                  kl_weight=params.get("kl_weight", 1e-8),  # GumbelVQ's default
                  temperature_scheduler_config=params.get("temperature_scheduler_config"))
    try:
        return VQGANConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{yaml_path}: {err}") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning / taming checkpoint, unpickled with `weights_only=True`: tensors, containers, the OmegaConf
    and argparse classes of `ofa.safe_load`, and `LIGHTNING_GLOBALS` as placeholders. Anything else is refused
    before it runs, named on one line."""
    return safe_torch_load(path, LIGHTNING_GLOBALS, "tensors, containers, OmegaConf configs and Lightning's "
                           "ModelCheckpoint/EarlyStopping/AttributeDict names")


def model_state(ckpt: dict, model: GumbelVQGAN, path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's `state_dict` without taming's `loss.*` keys (discriminator, LPIPS), checked against the
    model: every key present, none extra, same shapes (one-line errors listing a few)."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {_shape(state[k])} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and _shape(state[k]) != tuple(v.shape)]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            raise CheckpointError(f"{path}: {len(keys)} {label} keys: {', '.join(keys[:5])}{more}")
    return state


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def load_vqgan(path: str | Path, device: str | torch.device = "cpu") -> GumbelVQGAN:
    """A `GumbelVQGAN` in eval mode from a bundle directory or its `last.ckpt` (see `find_bundle`)."""
    yaml_path, ckpt_path = find_bundle(path)
    model = GumbelVQGAN(read_config(yaml_path))
    model.load_state_dict(model_state(read_checkpoint(ckpt_path), model, ckpt_path))
    return model.to(device).eval()


def taming_yaml(cfg: VQGANConfig) -> dict:
    """`model.yaml` contents in taming's format (what `GumbelVQ(**model.params)` takes)."""
    schedule = cfg.temperature_scheduler_config
    if schedule is None:  # GumbelVQ requires one: a constant temperature
        t = cfg.temperature
        schedule = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                    "params": {"warm_up_steps": 0, "max_decay_steps": 1, "lr_start": t, "lr_max": t, "lr_min": t}}
    params = {"kl_weight": cfg.kl_weight, "temperature_scheduler_config": schedule, "n_embed": cfg.n_embed,
              "embed_dim": cfg.embed_dim, "ddconfig": cfg.ddconfig(), "lossconfig": {"target": LOSS_TARGET}}
    return {"model": {"base_learning_rate": BASE_LEARNING_RATE, "target": TARGET, "params": params}}


def save_vqgan(model: GumbelVQGAN, cfg: VQGANConfig | None, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write `out_dir/model.yaml` (taming's format; `cfg` defaults to `model.cfg`) and `out_dir/last.ckpt`
    (`{"state_dict", "global_step", "epoch"}` plus `extra`, tensors and plain values only), each atomically.
    Returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "global_step": 0, "epoch": 0, **(extra or {})}
    _write_atomic(out / "model.yaml", lambda f: f.write(OmegaConf.to_yaml(taming_yaml(cfg or model.cfg)).encode()))
    _write_atomic(out / "last.ckpt", lambda f: torch.save(ckpt, f))
    return out


def _write_atomic(path: Path, write) -> None:  # noqa: ANN001 - a callable taking a binary file
    """Write through a temporary file in the same directory, then `os.replace` it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
