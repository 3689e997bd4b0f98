"""Safe unpickling of `.pt` / `.ckpt` files: `torch.load(weights_only=True)` plus a short allow-list.

A checkpoint may hold tensors, plain containers, and the argparse / OmegaConf classes that official fairseq
checkpoints store their config in; any other pickle global is refused before anything is run, with the
culprit named on one line (`CheckpointError`). Used by every reader of torch pickles: `ofa.checkpoint`
(fairseq `.pt`, HF-port `.bin`) and `ofa.checkpoint_io` (Lightning checkpoints).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def allowed_globals() -> list:
    """The only non-tensor classes a checkpoint may contain: argparse and OmegaConf containers."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    return [argparse.Namespace, DictConfig, ListConfig, ContainerMetadata, Metadata, nodes.AnyNode,
            nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any,
            collections.defaultdict, dict, list, tuple, int, float, str, bool]


def global_name(obj: Any) -> str:
    """`module.qualname` of a class or function, as a pickle names it."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', obj))}"


def pickle_globals(path: str | Path) -> list[str]:
    """Names of the globals a checkpoint's pickle refers to, read without unpickling anything."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    names, strings = [], []
    with open(path, "rb") as f:
        for _ in range(4):  # legacy torch.save: magic number, protocol, sys info, then the object
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        names.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(".".join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # noqa: BLE001 - raw storage bytes follow the pickles
                break
    return list(dict.fromkeys(names))


def safe_torch_load(path: str | Path, extra: dict[str, type] | None = None,
                    allowed_text: str = "tensors, argparse.Namespace and OmegaConf configs") -> Any:
    """`torch.load(weights_only=True)` on CPU allowing only `allowed_globals()` and `extra` (a pickled global's
    dotted name -> the class to build in its place); anything else is refused, unrun (`CheckpointError` naming
    the file and the refused globals; `allowed_text` says what is allowed)."""
    extra = extra or {}
    allowed = allowed_globals() + [(cls, name) for name, cls in extra.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        ok = {global_name(g) for g in allowed_globals()} | set(extra)
        try:
            bad = [g for g in pickle_globals(path) if g not in ok]
        except Exception:  # noqa: BLE001 - only used to name the culprit
            bad = []
        if not bad:
            raise CheckpointError(f"{path}: not a loadable checkpoint (unsupported or corrupt pickle)") from None
        raise CheckpointError(f"{path}: refusing to unpickle {', '.join(bad)} (only {allowed_text} are allowed)"
                              ) from None
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
