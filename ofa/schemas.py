"""Structured-config schemas for Hydra's ConfigStore, derived from the code's own config dataclasses and
constructor signatures, so a misspelled key or a wrong type fails at composition with the key's name.

- `train_schema` types the top level: scalars, `model` (`OFAConfig`), `tokenizer` (`build_tokenizer`'s
  arguments), `optim`, `schedule`, `module` (the lit module's dataclasses) and `trainer` (`pl.Trainer`).
- Options whose shape depends on the choice name their schema first in their own defaults list:
  `task/<name>.yaml` -> `/schema/task/<name>` (the task's config dataclass + `name` + `monitor`),
  `data/*.yaml` -> `/schema/data/default`, `logger/<x>.yaml` -> `/schema/logger/<x>`,
  `callbacks/*.yaml` -> `/schema/callbacks/default`.
`register_schemas()` must run before Hydra composes (train.py and the tests call it).
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import pytorch_lightning as pl
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf

from ofa.callbacks import CALLBACKS, LIGHTNING_CALLBACKS
from ofa.lit_module import ModuleConfig
from ofa.modules.config import OFAConfig
from ofa.tasks import TASKS, Task, TaskConfig
from ofa.tokenizer import build_tokenizer
from ofa.utils.optim import OptimConfig, ScheduleConfig

PRIMITIVES = (int, float, bool, str)
TRAINER_EXCLUDED = ("logger", "callbacks", "plugins", "profiler")  # built by the factory, not configured here
LOGGERS = {
    "wandb": "pytorch_lightning.loggers.WandbLogger",
    "csv": "pytorch_lightning.loggers.CSVLogger",
    "tensorboard": "pytorch_lightning.loggers.TensorBoardLogger",
}
WANDB_EXTRA = {"tags": Optional[list[str]], "group": Optional[str], "entity": Optional[str],
               "job_type": Optional[str], "notes": Optional[str], "mode": Optional[str]}  # wandb.init kwargs


# ------------------------------------------------------------------------------ derivation helpers
def omegaconf_type(annotation: Any) -> Any:
    """The annotation if OmegaConf can check it (primitives, Optional primitives, lists of them), else Any."""
    if annotation in PRIMITIVES:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if inner is not Any else Any
    if origin is list and len(args) == 1 and args[0] in PRIMITIVES:
        return list[args[0]]
    return Any


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return MISSING
    if value is None or isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, PRIMITIVES) for v in value):
        return field(default_factory=lambda v=list(value): list(v))
    return None  # objects (timedelta, paths, ...) are not configurable defaults


def signature_schema(fn: Callable, name: str, target: str | None = None, exclude: tuple[str, ...] = (),
                     extra: dict[str, Any] | None = None) -> type:
    """A dataclass whose fields are `fn`'s keyword parameters (+ `_target_`, + `extra` optional fields)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    fields: list[tuple] = [("_target_", str, field(default=target))] if target else []
    for p in sig.parameters.values():
        if p.name in ("self", *exclude) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(p.name, p.annotation if not isinstance(p.annotation, str) else Any)
        default = _default(p.default)
        ftype = omegaconf_type(ann)
        if default is None and ftype is not Any and type(None) not in typing.get_args(ftype):
            ftype = Optional[ftype]  # a None default the annotation does not admit (or an object default)
        fields.append((p.name, ftype, default if isinstance(default, dataclasses.Field) else field(default=default)))
    for key, ann in (extra or {}).items():
        fields.append((key, ann, field(default=None)))
    return dataclasses.make_dataclass(name, fields)


def task_config_class(task_cls: type[Task]) -> type:
    """The task's config dataclass: `config_class`, else the annotation of `__init__`'s `cfg`."""
    explicit = getattr(task_cls, "config_class", None)
    if explicit is not None:
        return explicit
    try:
        hint = typing.get_type_hints(task_cls.__init__).get("cfg")
    except Exception:
        hint = None
    return hint if dataclasses.is_dataclass(hint) else TaskConfig


def task_schema(name: str, task_cls: type[Task]) -> type:
    """Task config dataclass + `name` (the TASKS key) + `monitor` (metric for the best checkpoint)."""
    return dataclasses.make_dataclass(
        f"{task_cls.__name__}Schema",
        [("name", str, field(default=name)), ("monitor", str, field(default=task_cls.monitor))],
        bases=(task_config_class(task_cls),))


# ------------------------------------------------------------------------------ top level
@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    output_dir: str = "outputs"


TokenizerSchema = signature_schema(build_tokenizer, "TokenizerSchema")
TrainerSchema = signature_schema(pl.Trainer.__init__, "TrainerSchema", exclude=TRAINER_EXCLUDED)


class Stage(str, Enum):
    """What train.py runs; a str, so `cfg.stage == "fit"` holds."""

    fit = "fit"
    validate = "validate"
    test = "test"


@dataclass
class TrainSchema:
    """`conf/train.yaml`: run-level scalars and the groups whose type does not depend on the option."""

    seed: int = 0
    stage: Stage = Stage.fit
    ckpt_path: Optional[str] = None  # resume: weights, optimizer, scheduler, step
    init_from: Optional[str] = None  # weights only (OFA official / HF port / platform checkpoint)
    run_name: str = "run"
    test_after_fit: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: OFAConfig = field(default_factory=OFAConfig)
    tokenizer: TokenizerSchema = field(default_factory=TokenizerSchema)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    module: ModuleConfig = field(default_factory=ModuleConfig)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    task: Any = MISSING
    data: Any = MISSING
    logger: Any = None
    callbacks: Any = None


def callbacks_schema() -> type:
    """Every callback of `ofa.callbacks` (`LIGHTNING_CALLBACKS`, then the platform's `CALLBACKS`) as an
    optional, signature-typed field; an option sets the ones it uses."""
    fields = []
    for key, cls in {**LIGHTNING_CALLBACKS, **CALLBACKS}.items():
        target = f"{cls.__module__}.{cls.__qualname__}"
        schema = signature_schema(cls.__init__, f"{key.title().replace('_', '')}Schema", target)
        fields.append((key, Optional[schema], field(default=None)))
    return dataclasses.make_dataclass("CallbacksSchema", fields)


def dataclass_fields(cls: type, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[tuple]:
    """`cls`'s fields as `make_dataclass` entries with OmegaConf-checkable types (`defaults` replaces some)."""
    hints = typing.get_type_hints(cls)
    entries = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default, ftype = (defaults or {}).get(f.name, f.default), omegaconf_type(hints[f.name])
        if default is None and ftype is not Any and type(None) not in typing.get_args(ftype):
            ftype = Optional[ftype]
        entries.append((f.name, ftype, field(default=default)))
    return entries


def data_schema() -> type:
    """The data config: `LoaderConfig`'s fields; the shared shard patterns `{split}_shards` (written from
    `root`; `synthetic_dir` generates the synthetic dataset there on first use, null for real data); and
    `sources`, task name -> `TaskSource`'s fields less `task`, whose patterns default to the shared ones."""
    from ofa.datamodules.datamodule import LoaderConfig, TaskSource
    from ofa.datamodules.shards import SHARD_KEYS

    inherit = {key: f"${{...{key}}}" for key in SHARD_KEYS}  # data.sources.<name>.<key> -> data.<key>
    source = dataclasses.make_dataclass("SourceSchema", dataclass_fields(TaskSource, ("task",), inherit))
    shared = [("root", Optional[str], field(default=None)), ("synthetic_dir", Optional[str], field(default=None)),
              *((key, Any, field(default=None)) for key in SHARD_KEYS),
              ("sources", typing.Dict[str, source], field(default_factory=dict))]
    return dataclasses.make_dataclass("DataSchema", [*dataclass_fields(LoaderConfig), *shared])


def monitor_key(task_name: str, monitor: str, split: str = "val") -> str:
    """Logged name of the metric that picks the best checkpoint: `val/<task>/<metric>`; a mixture names
    its task in `monitor` (`vqa/score` -> `val/vqa/score`). Resolver `${monitor_key:name,monitor}`."""
    return f"{split}/{monitor}" if "/" in monitor else f"{split}/{task_name}/{monitor}"


def monitor_mode(monitor: str) -> str:
    """`min` for metrics where lower is better (a loss, FID), else `max`. Resolver `${monitor_mode:...}`."""
    name = monitor.rsplit("/", 1)[-1]
    return "min" if name == "loss" or name.endswith("_loss") or name == "fid" else "max"


def subdir(base: str | None, sub: str) -> str | None:
    """`base/sub`, or None when `base` is null. Resolver `${subdir:${data.synthetic_dir},text/cola}`: the data
    options of the text tasks find their synthetic folder, and `data.synthetic_dir=null` leaves `data.root` null."""
    return None if base is None else f"{base}/{sub}"


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore and register the config resolvers (idempotent)."""
    OmegaConf.register_new_resolver("monitor_key", monitor_key, replace=True)
    OmegaConf.register_new_resolver("subdir", subdir, replace=True)
    OmegaConf.register_new_resolver("monitor_mode", monitor_mode, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    for name, task_cls in TASKS.items():
        cs.store(group="schema/task", name=name, node=task_schema(name, task_cls))
    for name, target in LOGGERS.items():
        extra = WANDB_EXTRA if name == "wandb" else None
        cs.store(group="schema/logger", name=name,
                 node=signature_schema(get_class(target).__init__, f"{name.title()}LoggerSchema", target, extra=extra))
    cs.store(group="schema/callbacks", name="default", node=callbacks_schema())
    cs.store(group="schema/data", name="default", node=data_schema())
