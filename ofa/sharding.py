"""FSDP2 sharding of the OFA model (`trainer=fsdp2`) through Lightning's `ModelParallelStrategy`.

- `shard_model(model, mesh)`: `torch.distributed.fsdp.fully_shard` on every encoder and decoder layer, then on
  the root (`OFAModel`: embeddings, ResNet, norms, position tables; the tied token embedding stays in the root
  group, once). `encode` / `decode` (what beam search calls) are registered as FSDP forward methods, so
  generation gathers the root's parameters like `forward` does.
- `FSDP2Strategy`: Lightning's `ModelParallelStrategy` with a 1-D data-parallel mesh over all ranks by default
  (Lightning's own default is a 2-D data x tensor mesh, for tensor parallelism OFA has no plan for) and the
  sharding options; `OFALitModule.configure_model` calls its `shard_model` right after building the model.
  Checkpoints are torch.distributed.checkpoint folders (`last.ckpt/`: one shard file per rank + `meta.pt`),
  written to a hidden folder first and then swapped in by one rename of a symlink, so a kill mid-save leaves
  the previous checkpoint whole (`ofa-consolidate` turns a folder into one ordinary `.ckpt`).
- `FSDP1Strategy`: Lightning's `FSDPStrategy` (`trainer=fsdp`, GPUs only) with the same folder swap and resume fix.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from ofa.errors import RunConfigError
from ofa.modules.model import OFAModel
from ofa.safe_load import safe_torch_load

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint folder
FORWARD_METHODS = ("encode", "decode")  # OFAModel methods called directly by generation and scoring


def layers_of(model: OFAModel) -> list[nn.Module]:
    """The transformer layers, each its own FSDP unit (one all-gather per layer)."""
    return [*model.encoder.layers, *model.decoder.layers]


def shard_model(model: OFAModel, mesh: DeviceMesh | None = None, reshard_after_forward: bool = True,
                mp_policy: MixedPrecisionPolicy | None = None) -> OFAModel:
    """FSDP2 in place: each layer, then the root; returns the model (now an `FSDPModule`). With a low-precision
    `param_dtype`, the ResNet is a unit of its own that computes in float32 (its BatchNorm statistics are float32
    buffers, which batch norm refuses to mix with bfloat16 weights) and hands on its features in `param_dtype`."""
    # inputs are never cast: casting copies dataclass and dict arguments, and `decode` and each decoder layer must
    # update the very cache that beam search holds (the image goes through the ResNet unit, which casts it itself)
    policy = dataclasses.replace(mp_policy or MixedPrecisionPolicy(), cast_forward_inputs=False)
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    for layer in layers_of(model):
        fully_shard(layer, mp_policy=policy, **kwargs)
    resnet = getattr(model.encoder, "embed_images", None)
    if policy.param_dtype not in (None, torch.float32) and resnet is not None:
        fully_shard(resnet, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32,
                                                           output_dtype=policy.param_dtype), **kwargs)
    fully_shard(model, mp_policy=policy, **kwargs)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(model, name)
    return model


def dtype_of(name: str | None) -> torch.dtype | None:
    """`"bfloat16"` -> `torch.bfloat16`; None stays None (FSDP2: the parameters' own dtype)."""
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (e.g. bfloat16, float16, float32)")
    return dtype


class SwappedFolderCheckpoints:
    """For a Lightning sharding strategy that writes checkpoint folders: each save goes into `.<name>.<id>/` beside
    the target, then the target (a symlink) is switched to it by one rename and the previous folder removed. A
    strategy writing one file (`_writes_folders()` false) keeps its own, atomic, checkpoint IO."""

    def _writes_folders(self) -> bool:
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        if not self._writes_folders():
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        staged = target.parent / self.broadcast(f".{target.name}.{uuid.uuid4().hex[:8]}")
        super().save_checkpoint(checkpoint, staged, storage_options)
        self.barrier()
        if self.global_rank == 0:
            swap_in(staged, target)
        self.barrier()


class FSDP1Strategy(SwappedFolderCheckpoints, FSDPStrategy):
    """Lightning's FSDPStrategy (`trainer=fsdp`, GPUs) with folders swapped in atomically and the resume fix of
    `FSDP2Strategy` (the train loader built again once the datamodule has its stream position back)."""

    def _writes_folders(self) -> bool:
        return self._state_dict_type == "sharded"

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        rebuild_train_loader(self.lightning_module.trainer)
        return super().load_checkpoint(checkpoint_path, weights_only)


class FSDP2Strategy(SwappedFolderCheckpoints, ModelParallelStrategy):
    """`ModelParallelStrategy` that shards the OFA model with FSDP2 over all ranks (see the module docstring)."""

    def __init__(self, reshard_after_forward: bool = True, param_dtype: str | None = None,
                 reduce_dtype: str | None = None, data_parallel_size: Literal["auto"] | int = "auto",
                 tensor_parallel_size: Literal["auto"] | int = "auto", save_distributed_checkpoint: bool = True,
                 process_group_backend: str | None = None, timeout: timedelta | None = timedelta(minutes=30)) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint,
                         process_group_backend, timeout)
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = MixedPrecisionPolicy(param_dtype=dtype_of(param_dtype), reduce_dtype=dtype_of(reduce_dtype))

    def setup_environment(self) -> None:
        world = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = world // self._tensor_parallel_size
        super().setup_environment()

    def shard_model(self, model: OFAModel) -> OFAModel:
        """Called by `OFALitModule.configure_model` on the freshly built (or `init_from`-loaded) model."""
        ema = getattr(getattr(getattr(self.lightning_module, "cfg", None), "ema", None), "decay", 0.0)
        if ema > 0:  # its shadow weights would be this rank's shards, saved by rank 0 alone
            raise RunConfigError(f"module.ema.decay={ema}: the EMA of the weights is not supported with trainer=fsdp2 "
                                 "(use trainer=ddp, or module.ema.decay=0)")
        if self._tensor_parallel_size != 1:
            raise RunConfigError(f"trainer.strategy.tensor_parallel_size={self._tensor_parallel_size}: OFA has no "
                                 "tensor-parallel plan; FSDP2 shards over data_parallel_size only")
        return shard_model(model, self.device_mesh["data_parallel"], self.reshard_after_forward, self.mp_policy)

    def _writes_folders(self) -> bool:
        return self._save_distributed_checkpoint

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded folder (each rank reads its shards) or one `.ckpt` file (read whole by every rank, with the
        safe loader): the weights, then (when fitting) the optimizer state. Parameters that never had a gradient
        (e.g. the image-code embeddings of a caption run) have no Adam state, which Lightning's strict loader
        refuses and this one accepts. Returns the rest (`meta.pt` of a folder)."""
        path = Path(self.broadcast(str(checkpoint_path)))
        fitting = rebuild_train_loader(self.lightning_module.trainer)
        if not is_sharded_checkpoint(path):
            return self._load_full_checkpoint(path, fitting)
        state = {"state_dict": get_model_state_dict(self.model)}
        dcp.load(state, checkpoint_id=path)
        self.model.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        partial = dcp.DefaultLoadPlanner(allow_partial_load=True)
        for i, optimizer in enumerate(self.optimizers if fitting else []):
            optim = {f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optim, checkpoint_id=path, planner=partial)
            set_optimizer_state_dict(self.model, optimizer, optim[f"optimizer_{i}"],
                                     options=StateDictOptions(strict=False))
        return safe_torch_load(path / META_FILE)

    def _load_full_checkpoint(self, path: Path, fitting: bool) -> dict[str, Any]:
        """An ordinary `.ckpt` (`ofa-consolidate`'s, or `save_distributed_checkpoint=false`) into the sharded model."""
        checkpoint = safe_torch_load(path)
        own = self.model.state_dict()  # DTensor shards (the tied embedding under each of its names) and buffers
        weights = {k: distribute_tensor(v, own[k].device_mesh, own[k].placements) if isinstance(own.get(k), DTensor)
                   else v for k, v in checkpoint.pop("state_dict").items()}
        self.model.load_state_dict(weights, strict=self.lightning_module.strict_loading)
        names = {id(p): name for name, p in self.model.named_parameters()}
        for optimizer, state in zip(self.optimizers if fitting else [], checkpoint.pop("optimizer_states", [])):
            named = named_optimizer_state(state, [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups])
            set_optimizer_state_dict(self.model, optimizer, named,
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        return checkpoint


def rebuild_train_loader(trainer: Any) -> bool:
    """Sharding strategies restore checkpoints after setup, where `configure_optimizers` (its
    `estimated_stepping_batches`) already built the train loader, before the datamodule got its stream position
    back: have the fit loop build it again. True when fitting."""
    if trainer.state.fn != TrainerFn.FITTING:
        return False
    trainer.fit_loop._combined_loader = None
    return True


def named_optimizer_state(state: dict[str, Any], group_names: list[list[str]]) -> dict[str, Any]:
    """torch's id-keyed optimizer state -> keyed by parameter name (ids number the groups' parameters in order)."""
    if [len(g["params"]) for g in state["param_groups"]] != [len(g) for g in group_names]:
        raise RunConfigError("the checkpoint's optimizer has other parameter groups than this run's (another model "
                             "or optim config?)")
    names = [name for group in group_names for name in group]
    groups = [{**group, "params": params} for group, params in zip(state["param_groups"], group_names)]
    return {"state": {names[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def is_sharded_checkpoint(path: Path) -> bool:
    """A torch.distributed.checkpoint folder written by Lightning (shards + `meta.pt`)."""
    return path.is_dir() and (path / META_FILE).is_file()


def swap_in(staged: Path, target: Path) -> None:
    """Point `target` (a symlink, relative) at `staged` atomically; remove what it pointed at before."""
    old = target.resolve() if target.is_symlink() else None
    link = target.parent / f".{target.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(staged.name, link)
    if target.exists() and not target.is_symlink():  # a plain file or folder from an earlier strategy
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(link, target)
    if old is not None and old != staged.resolve() and old.parent == target.parent.resolve():
        shutil.rmtree(old, ignore_errors=True)
