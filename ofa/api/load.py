"""What `ofa.from_pretrained` reads: weights + model config (`ofa.checkpoint`), the vocabulary and the tasks'
settings, from any of the four checkpoint kinds.

- vocabulary: the `tokenizer` argument (OFA's BPE folder, BART's `vocab.json` + `merges.txt` folder or a
  `tokenizer.json`) wins; else the one the checkpoint carries (a run's `.ckpt` record, `tokenizer.json` beside
  a platform / HF-port folder's weights); else BPE files beside the weights. An official fairseq `.pt`
  carries none: give `tokenizer=`.
- task settings (`{task: {config field: value}}`, e.g. the image size the model was trained at and the
  VQA answers): `tasks.json` of a platform folder (written by `save_pretrained`), or the Hydra config of the
  run a `.ckpt` belongs to (`<run>/.hydra/config.yaml`, candidate files read into inline lists); none
  otherwise (the tasks' own defaults).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tokenizers import Tokenizer

from ofa.checkpoint import Checkpoint, read_checkpoint
from ofa.safe_load import CheckpointError
from ofa.tasks import TASKS
from ofa.tasks.candidates import load_candidates
from ofa.tokenizer import OFATokenizer, build_tokenizer

TASKS_FILE = "tasks.json"
CANDIDATE_FILES = {"answers_file": "answers", "classes_file": "classes"}  # file key -> inline key
TOKENIZER_LAYOUTS = (("tokenizer.json", "trained"), ("vocab.json", "hf"), ("encoder.json", "ofa"))


def read_source(path: str | Path, ema: bool = False) -> Checkpoint:
    """The checkpoint at `path`; a missing path or an unreadable file is a `CheckpointError` naming it."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: no such file or directory")
    return read_checkpoint(path, ema)


def load_tokenizer(ckpt: Checkpoint, tokenizer: str | Path | None = None) -> OFATokenizer:
    """The vocabulary of `ckpt` (module docstring for the order)."""
    if tokenizer is not None:
        return tokenizer_at(Path(tokenizer))
    carried = (ckpt.meta.get("tokenizer") or {}).get("json")
    if carried:
        return OFATokenizer(Tokenizer.from_str(carried))
    source = Path(ckpt.source)
    folder = source if source.is_dir() else source.parent
    if any((folder / name).is_file() for name, _ in TOKENIZER_LAYOUTS):
        return tokenizer_at(folder)
    raise CheckpointError(f"{ckpt.source}: carries no vocabulary; pass tokenizer= (OFA's BPE folder with "
                          "encoder.json, vocab.bpe, dict.txt; a folder with vocab.json + merges.txt; or a "
                          "tokenizer.json)")


def tokenizer_at(path: Path) -> OFATokenizer:
    """A `tokenizer.json` file, or a folder holding one of the three layouts."""
    if path.is_file():
        return build_tokenizer("trained", path)
    for name, kind in TOKENIZER_LAYOUTS:
        if (path / name).is_file():
            return build_tokenizer(kind, path)
    raise CheckpointError(f"tokenizer={path}: no tokenizer.json, vocab.json + merges.txt or "
                          "encoder.json + vocab.bpe + dict.txt there")


def load_task_settings(ckpt: Checkpoint) -> dict[str, dict]:
    """`{task: {field: value}}` saved with the checkpoint (module docstring); `{}` if none."""
    source = Path(ckpt.source)
    folder = source if source.is_dir() else source.parent
    if (folder / TASKS_FILE).is_file():
        return json.loads((folder / TASKS_FILE).read_text())
    run_config = folder.parent / ".hydra" / "config.yaml"
    if ckpt.meta.get("format") == "lightning" and run_config.is_file():
        return settings_of_run(run_config)
    return {}


def settings_of_run(config_path: Path) -> dict[str, dict]:
    """Task settings from a run's composed Hydra config: each task node's config fields, resolved (a key
    whose value needs the training process, e.g. `${hydra:...}`, is left to the task's default), relative
    paths taken from the run's working directory and candidate files read into inline lists."""
    cfg = OmegaConf.load(config_path)
    hydra_path = config_path.parent / "hydra.yaml"
    cwd = Path(OmegaConf.load(hydra_path).hydra.runtime.cwd) if hydra_path.is_file() else Path.cwd()
    nodes = cfg.task.get("tasks") or {cfg.task.get("name"): cfg.task}
    return {name: task_fields(name, resolved(node), cwd) for name, node in nodes.items() if name in TASKS}


def resolved(node: Any) -> dict[str, Any]:
    """The keys of a config node that resolve here, as plain values. `${hydra:...}` values are skipped, not
    resolved: in a process that runs Hydra itself they would take that process's values, not the run's."""
    out = {}
    raw = OmegaConf.to_container(node, resolve=False)
    for key in node:
        if "${hydra:" in repr(raw[key]):
            continue
        try:
            value = node[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # an interpolation of the training process (hydra:..., a missing env variable)
            continue
    return out


def task_fields(name: str, node: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """The task's config fields of `node` (`name`, `monitor` dropped), candidate files inlined."""
    from ofa.schemas import task_config_class

    fields = task_config_class(TASKS[name]).__dataclass_fields__
    out = {k: v for k, v in node.items() if k in fields}
    for file_key, inline_key in CANDIDATE_FILES.items():
        path = out.pop(file_key, None)
        if path and not out.get(inline_key):
            full = Path(path) if Path(path).is_absolute() else cwd / path
            if full.is_file():
                out[inline_key] = load_candidates(full)
    return out
