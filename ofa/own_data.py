"""Defaults that follow the data: what the synthetic world supplies implicitly, derived for the user's shards.

`python train.py task=vqa data.synthetic_dir=null data.root=/my/shards` (docs/DATA.md):
- `data.root` left null is the folder of the training shards (`data.train_shards=/my/shards/train-*.tar`);
- the base's split patterns `${data.root}/{val,test}-*.tar` that match no file turn that split off (logged);
- a closed set or vocabulary left at its default path beside the shards (`task.answers_file`,
  `task.classes_file`, `tokenizer.path` with `tokenizer=trained`) is derived from the training shards on first
  use and cached there (`<data.root>/answers.json`, `classes.json`, `tokenizer.json`); a later run reuses it;
- a file named explicitly that does not exist ends the run with one line naming its key (`RunConfigError`).
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ofa.datamodules import vocab
from ofa.datamodules.shards import expand_shards, shard_patterns_read
from ofa.errors import RunConfigError
from ofa.utils.logging import get_logger

log = get_logger(__name__)
ROOT = "${data.root}/"  # how a default path beside the shards is written in conf/
OPTIONAL_SPLITS = ("val", "test")
# task name -> (config key of its candidate file, key of its inline list, what the derived file holds)
CANDIDATE_FILES = {"vqa": ("answers_file", "answers", "answers"),
                   "image_classify": ("classes_file", "classes", "classes")}


@dataclass(frozen=True)
class DerivedFile:
    """A file to derive from training shards: `what` (answers, classes, tokenizer) for config key `key`."""

    key: str
    path: Path
    what: str
    urls: tuple[str, ...]


def prepare_own_data(cfg: DictConfig) -> None:
    """Fill `data.root`, turn absent default splits off, derive the missing default files (module docstring)."""
    fill_root(cfg.data, task_names(cfg.task))
    drop_absent_splits(cfg.data)
    derive_files(plan_derived_files(cfg))


def raw(node: DictConfig, key: str) -> Any:
    """`node.key` as written in the config (interpolations unresolved)."""
    return OmegaConf.to_container(node, resolve=False).get(key)


def is_beside_shards(node: DictConfig, key: str) -> bool:
    """Whether `node.key` is still the default path `${data.root}/...` (derived when missing)."""
    value = raw(node, key)
    return isinstance(value, str) and value.startswith(ROOT)


def task_nodes(task_cfg: DictConfig) -> dict[str, DictConfig]:
    """Config key prefix -> task node: `{"task": cfg.task}`, or `task.tasks.<name>` for a mixture."""
    if task_cfg.get("tasks"):
        return {f"task.tasks.{name}": node for name, node in task_cfg.tasks.items()}
    return {"task": task_cfg}


def task_names(task_cfg: DictConfig) -> list[str]:
    return [node.name for node in task_nodes(task_cfg).values()]


def train_pattern(data: DictConfig, name: str) -> tuple[str, Any]:
    """(config key, pattern) of the shards task `name` trains on: its own source's or the shared ones."""
    found = shard_patterns_read(data, [name])
    return next((key, value) for key, value in found.items() if key.endswith("train_shards"))


def expand(key: str, pattern: Any) -> list[str]:
    """Shard URLs of `pattern`, or one line naming `key` when it matches nothing."""
    try:
        return expand_shards(pattern)
    except ValueError as err:
        raise RunConfigError(f"{key}={pattern}: {err}") from None


# ---- data.root and the split patterns -----------------------------------------------------------
def fill_root(data: DictConfig, names: list[str]) -> None:
    """`data.root` null: the folder of the first local training shard, so every default beside the shards
    (`val-*.tar`, `answers.json`, `tokenizer.json`, ...) follows the training data."""
    if data.get("root"):
        return
    patterns = [(key, value) for key, value in (train_pattern(data, n) for n in names)
                if value and not (key == "data.train_shards" and is_beside_shards(data, "train_shards"))]
    if not patterns:
        raise RunConfigError("data.root is null and data.train_shards follows it: set data.root=<folder of your "
                             "train-*.tar shards> or data.train_shards=<pattern> (docs/DATA.md)")
    local = vocab.local_urls(expand(*patterns[0]))
    if local:
        data.root = str(Path(local[0]).resolve().parent)
        log.info("data.root=%s (the folder of %s)", data.root, patterns[0][0])


def drop_absent_splits(data: DictConfig) -> None:
    """The base's `${data.root}/{val,test}-*.tar` matching no file: no such split (own data may have none)."""
    for split in OPTIONAL_SPLITS:
        key = f"{split}_shards"
        if raw(data, key) == f"{ROOT}{split}-*.tar" and not glob.glob(data[key]):
            log.warning("data.%s: no file matches %s, so this run has no %s split (set data.%s=<pattern>)",
                        key, data[key], split, key)
            data[key] = None


# ---- candidate files and the trained tokenizer --------------------------------------------------
def plan_derived_files(cfg: DictConfig) -> list[DerivedFile]:
    """The default files this run needs that do not exist yet; an explicit file that is missing raises."""
    planned = []
    for prefix, node in task_nodes(cfg.task).items():
        if node.name in CANDIDATE_FILES:
            planned += plan_candidates(cfg.data, node, prefix)
    if cfg.tokenizer.get("kind") == "trained":
        planned += plan_tokenizer(cfg)
    return planned


def plan_candidates(data: DictConfig, node: DictConfig, prefix: str) -> list[DerivedFile]:
    """A task's candidate file: present (reused), inline (`task.answers`), or derived from its training shards."""
    file_key, inline_key, what = CANDIDATE_FILES[node.name]
    path = node.get(file_key)
    key = f"{prefix}.{file_key}"
    if node.get(inline_key) or (path and Path(path).is_file()):
        log.info("%s: %s", key, f"inline {inline_key}" if node.get(inline_key) else path)
        return []
    if not is_beside_shards(node, file_key):
        state = "does not exist" if path else "is null"
        raise RunConfigError(f"{key}={path} {state}; give an existing file (json list, {{name: index}} "
                             f"json or OFA .pkl), or leave {key} at its default to derive the {what} from the "
                             f"training shards")
    urls = tuple(expand(*train_pattern(data, node.name)))
    return [DerivedFile(key, _beside_root(data, key, path), what, urls)]


def plan_tokenizer(cfg: DictConfig) -> list[DerivedFile]:
    """`tokenizer=trained`: its tokenizer.json, or a BPE trained on every task's training shards."""
    path = Path(cfg.tokenizer.path)
    if path.is_file() or (path / "tokenizer.json").is_file():
        log.info("tokenizer.path: %s", path)
        return []
    if not is_beside_shards(cfg.tokenizer, "path"):
        raise RunConfigError(f"tokenizer.path={path} does not exist; give a tokenizer.json (tokenizer=trained), "
                             f"tokenizer=ofa tokenizer.path=<dir with encoder.json, vocab.bpe, dict.txt>, or "
                             f"leave tokenizer.path at its default to train a BPE on the training shards")
    urls = {url: None for name in task_names(cfg.task) for url in expand(*train_pattern(cfg.data, name))}
    return [DerivedFile("tokenizer.path", _beside_root(cfg.data, "tokenizer.path", path), "tokenizer", tuple(urls))]


def _beside_root(data: DictConfig, key: str, path: Any) -> Path:
    if not data.get("root"):
        raise RunConfigError(f"{key}: the training shards are not local files, so there is no folder to cache "
                             f"the derived file in; set data.root=<a writable folder>")
    return Path(path)


def derive_files(planned: list[DerivedFile]) -> None:
    """Scan each distinct set of training shards once (texts only if a tokenizer is derived from them)."""
    for urls in dict.fromkeys(item.urls for item in planned):
        group = [item for item in planned if item.urls == urls]
        local = vocab.local_urls(urls)
        found = vocab.scan_shards(local, texts=any(item.what == "tokenizer" for item in group))
        for item in group:
            write_derived(item, found)


def write_derived(item: DerivedFile, found: vocab.ShardVocab) -> None:
    """Write one derived file from the scan; an empty closed set raises (one line naming the key)."""
    source = f"{found.samples} samples in {found.shards} training shard(s)"
    if item.what == "tokenizer":
        tokenizer = vocab.derived_tokenizer(found)
        vocab.save_tokenizer_atomically(tokenizer, item.path)
        log.info("%s: trained a BPE (%d ids) on %s -> %s", item.key, len(tokenizer), source, item.path)
        return
    names = vocab.ranked(found.answers if item.what == "answers" else found.labels)
    if not names:
        field = "vqa[].answers with a confidence > 0" if item.what == "answers" else "label"
        raise RunConfigError(f"{item.key}: no {item.what} to derive: no sample with an image and `{field}` among "
                             f"the {source}; give {item.key}=<file> or fix the training shards")
    vocab.write_json_atomically(item.path, names)
    log.info("%s: %d %s derived from %s -> %s (delete it to derive again)", item.key, len(names), item.what,
             source, item.path)
