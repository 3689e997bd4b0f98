"""Build the run's objects from the composed config: tokenizer -> tasks -> datamodule -> lit module ->
trainer (+ logger, callbacks). Each `build_*` takes the config node that feeds it, so train.py only wires.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ofa.callbacks import RNGStateCallback
from ofa.checkpoint_io import AtomicCheckpointIO, tokenizer_record
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, build_sources
from ofa.datamodules.negative_samples import ensure_negative_samples, is_synthetic_negatives
from ofa.datamodules.shards import SHARD_KEYS, expand_shards
from ofa.datamodules.synthetic import ensure_synthetic_dataset
from ofa.datamodules.synthetic_codes import CODE_TASKS, ensure_code_shards, vqgan_stamp
from ofa.datamodules.synthetic_judges import ensure_synthetic_judges
from ofa.errors import RunConfigError
from ofa.lit_module import OFALitModule
from ofa.own_data import prepare_own_data
from ofa.schemas import task_config_class
from ofa.tasks import TASKS, Task
from ofa.tokenizer import OFATokenizer, build_tokenizer
from ofa.utils.logging import get_logger

log = get_logger(__name__)
DATA_KEYS = ("root", "synthetic_dir", *SHARD_KEYS, "sources")  # data keys that are not LoaderConfig fields
WRAP_POLICY_KEYS = ("auto_wrap_policy", "activation_checkpointing_policy")


def plain(node: Any) -> Any:
    """A config node as plain containers (resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def typed(node: DictConfig) -> Any:
    """A schema-typed node as its dataclass instance (nested dataclasses included), interpolations resolved."""
    return OmegaConf.to_object(node)


def prepare_data_dir(cfg: DictConfig) -> None:
    """Before the tokenizer and tasks are built: generate the synthetic dataset on first use
    (`data.synthetic_dir`), then fill in what follows the data (`ofa.own_data`): `data.root`, absent default
    splits, and the answers, classes and tokenizer derived from the user's training shards (cached beside them)."""
    if cfg.data.get("synthetic_dir"):
        task_nodes = cfg.task.tasks.items() if cfg.task.get("tasks") else [(cfg.task.name, cfg.task)]
        for name, node in task_nodes:  # a missing VQGAN is refused before the world is generated
            if name in CODE_TASKS and node.get("vqgan"):
                vqgan_stamp(str(node.vqgan))
        path = ensure_synthetic_dataset(cfg.data.synthetic_dir)
        log.info("synthetic dataset: %s", path)
        for name, node in task_nodes:
            codes = ensure_code_shards(cfg.data.synthetic_dir, name, node)
            if codes is not None:
                log.info("code shards of %s: %s", name, codes)
            if name == "image_gen" and (node.get("judge") or node.scorer.kind == "synthetic"):
                log.info("judge and scorer of the synthetic world: %s", ensure_synthetic_judges(cfg.data.synthetic_dir))
            if name == "pretrain" and is_synthetic_negatives(cfg.data.synthetic_dir, node.get("neg_sample_dir")):
                log.info("negative samples: %s", ensure_negative_samples(cfg.data.synthetic_dir))
    prepare_own_data(cfg)


def build_tasks(task_cfg: DictConfig, tokenizer: OFATokenizer) -> dict[str, Task]:
    """`{name: Task}`: the configured task, or every task of a mixture (`task.tasks.<name>` nodes)."""
    if task_cfg.get("tasks"):
        return {name: build_task(sub, tokenizer) for name, sub in task_cfg.tasks.items()}
    return {task_cfg.name: build_task(task_cfg, tokenizer)}


def build_task(task_cfg: DictConfig, tokenizer: OFATokenizer) -> Task:
    """One task from its schema-typed node (`name`, `monitor` + the task's config dataclass fields)."""
    name = task_cfg.name
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is not a registered task; choose from {sorted(TASKS)}")
    task_cls, cfg = TASKS[name], typed(task_cfg)  # a subclass of the task's config dataclass
    if not isinstance(cfg, task_config_class(task_cls)):
        raise TypeError(f"task config for {name!r} is not validated by its schema (missing /schema/task/{name})")
    task = task_cls(tokenizer, cfg)
    task.monitor = task_cfg.monitor
    return task


def build_datamodule(data_cfg: DictConfig, tasks: dict[str, Task]) -> OFADataModule:
    """One `TaskSource` per built task: its `data.sources.<task>` entry (weight, shard overrides) if any, else
    weight 1 and the shared `data.*_shards`; every other data key is a `LoaderConfig` field."""
    data = plain(data_cfg)
    configured = data.get("sources") or {}
    unknown = [name for name in configured if name not in tasks]
    if unknown:
        raise RunConfigError(f"data.sources has entries for task(s) {unknown} that this run does not build "
                             f"(tasks: {sorted(tasks)}); pick the task's data option (data=<task>)")
    entries = {name: configured.get(name) or {} for name in tasks}
    sources = build_sources(entries, tasks, defaults={key: data.get(key) for key in SHARD_KEYS})
    for source in sources:  # what a task derives from its training data (SCST's document frequencies)
        if source.train_shards:
            source.task.prepare_training(expand_shards(source.train_shards))
    loader = LoaderConfig(**{k: v for k, v in data.items() if k not in DATA_KEYS})
    return OFADataModule(sources, loader)


def build_lit_module(cfg: DictConfig, tasks: dict[str, Task], tokenizer: OFATokenizer) -> OFALitModule:
    """The model config takes its vocabulary size and special ids from the tokenizer; the tokenizer's record
    (identity + content) goes into every checkpoint, so a run's `.ckpt` alone rebuilds its model."""
    model_cfg = dataclasses.replace(typed(cfg.model), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad,
                                    bos_token_id=tokenizer.bos, eos_token_id=tokenizer.eos)
    init_from = cfg.init_from if not cfg.ckpt_path else None  # resuming restores the weights anyway
    record = tokenizer_record(cfg.tokenizer.kind, cfg.tokenizer.path, tokenizer)
    return OFALitModule(model_cfg, tasks, typed(cfg.optim), typed(cfg.schedule), typed(cfg.module), init_from,
                        record)


def build_logger(logger_cfg: DictConfig | None) -> pl.loggers.Logger | bool:
    """The configured logger, or False (`logger=none`)."""
    if not logger_cfg:
        return False
    kwargs = {k: v for k, v in plain(logger_cfg).items() if v is not None}
    return instantiate(kwargs)


def build_callbacks(callbacks_cfg: DictConfig | None) -> list[pl.Callback]:
    """One callback per non-null entry of the callbacks group."""
    return [instantiate(plain(spec)) for spec in (callbacks_cfg or {}).values() if spec]


def build_strategy(strategy: Any) -> Any:
    """A strategy name as is, or `_target_` + arguments, with layer class paths turned into a class set."""
    if not isinstance(strategy, (dict, DictConfig)):
        return strategy
    spec = plain(strategy)
    for key in WRAP_POLICY_KEYS:
        if isinstance(spec.get(key), list):
            spec[key] = {get_class(path) for path in spec[key]}
    return instantiate(spec, _convert_="all")


def build_trainer(trainer_cfg: DictConfig, logger: Any, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Always with atomic, weights_only checkpoint IO (`ofa.checkpoint_io`) and RNG states in checkpoints
    (`ofa.callbacks.RNGStateCallback`)."""
    kwargs = plain(trainer_cfg)
    kwargs["strategy"] = build_strategy(trainer_cfg.strategy)
    io = AtomicCheckpointIO()
    if isinstance(kwargs["strategy"], pl.strategies.Strategy):
        kwargs["strategy"].checkpoint_io, plugins = io, []  # a strategy object takes its IO directly
    else:
        plugins = [io]
    if kwargs.get("enable_progress_bar") is False:  # Lightning refuses a progress-bar callback with the bar off
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    return pl.Trainer(**kwargs, logger=logger, callbacks=[*callbacks, RNGStateCallback()], plugins=plugins)


def build_tokenizer_from(tok_cfg: DictConfig) -> OFATokenizer:
    """The configured vocabulary; missing files end the run with one line naming `tokenizer.path`."""
    try:
        return build_tokenizer(**plain(tok_cfg))
    except FileNotFoundError as err:
        raise RunConfigError(f"tokenizer.path={tok_cfg.path}: {err}") from None
