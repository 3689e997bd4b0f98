"""The user's own data, the way docs/DATA.md walks through it: images + a JSONL (with a bad row) ->
`ofa-convert-data` -> `train.py task=... data.synthetic_dir=null data.root=...`, with the answers, classes and
tokenizer derived from the training shards, cached beside them and reused; plus the config-level rules of
ofa/own_data.py (data.root from the training shards, absent default splits, explicit files must exist)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning  # noqa: F401  # sets the rank that ofa's rank-zero logger (as in train.py) needs
from omegaconf import OmegaConf
from PIL import Image
from subprocess_runs import run_command, run_concurrently

from ofa import own_data
from ofa.errors import RunConfigError
from ofa.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=1", "model.encoder_attention_heads=2",
        "model.decoder_attention_heads=2", "model.encoder_ffn_dim=64", "model.decoder_ffn_dim=64",
        "task.image_size=32", "data.batch_size=4", "data.eval_batch_size=8", "debug=fdr", "logger=none"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SIZES = [(37, 53), (61, 29), (45, 45), (80, 33), (19, 71)]  # odd sizes, portrait and landscape


def env() -> dict:
    out = {**os.environ, "WANDB_MODE": "offline"}
    out.pop("HYDRA_FULL_ERROR", None)
    return out


def convert_cmd(*args: str) -> list[str]:
    """The installed `ofa-convert-data` script (as the docs call it; run by this python, as its first line says,
    so the train server starts it), else its module."""
    script = Path(sys.executable).parent / "ofa-convert-data"
    module = [str(script)] if script.exists() else ["-m", "ofa.datamodules.convert"]
    return [sys.executable, *module, *args]


def train_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", "data.synthetic_dir=null",
            *TINY, *overrides]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = run_command(cmd, ROOT, env())
    assert proc.returncode == 0, f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_jsonl(folder: Path, split: str, rows: list[dict]) -> Path:
    """Images (JPEG and PNG, odd sizes) + `<split>.jsonl`, with one row pointing at a missing image and one
    row that is not json (both skipped by the converter)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        name = f"images/{split}-{i}.{'jpg' if i % 2 else 'png'}"
        Image.new("RGB", SIZES[i % len(SIZES)], COLORS[row.pop("color")]).save(folder / name)
        lines.append(json.dumps({"id": f"{split}-{i}", "image": name, **row}))
    lines[1:1] = [json.dumps({"id": "bad", "image": "images/missing.jpg", "label": "x"}), "{not json"]
    path = folder / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def convert(jsonl: Path, out: Path, split: str) -> dict:
    proc = run(convert_cmd("jsonl", str(jsonl), "--out", str(out), "--split", split, "--shard-size", "4"))
    assert "skipped 2 of" in proc.stderr and "missing image file: 1" in proc.stderr
    return json.loads((out / f"{split}-summary.json").read_text())


def vqa_row(i: int) -> dict:
    color = list(COLORS)[i % 3] if i % 4 else "red"  # red is the most frequent answer
    return {"color": color, "vqa": [{"question": "what color is the picture?",
                                     "answers": {color: 1.0, f"dark {color}": 0.3, "purple": 0}}]}


@pytest.mark.slow
def test_vqa_on_own_shards_derives_and_reuses_answers_and_tokenizer(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    convert(write_jsonl(tmp_path / "raw", "train", [vqa_row(i) for i in range(10)]), shards, "train")
    convert(write_jsonl(tmp_path / "raw", "val", [vqa_row(i) for i in range(4)]), shards, "val")
    first = run(train_cmd(tmp_path / "run1", "task=vqa", f"data.root={shards}"))
    answers = json.loads((shards / "answers.json").read_text())
    assert answers == ["dark red", "red", "blue", "dark blue", "dark green", "green"]  # by count, then name
    assert "test split" in first.stdout + first.stderr  # no test-*.tar: the run has no test set
    tok = build_tokenizer("trained", shards / "tokenizer.json")
    assert tok.decode(tok.encode(" what color is the picture?")) == " what color is the picture?"
    assert {"val/vqa/score"} <= set(json.loads((tmp_path / "run1" / "metrics.json").read_text()))
    stamps = {p.name: p.stat().st_mtime_ns for p in (shards / "answers.json", shards / "tokenizer.json")}

    again, missing = run_concurrently([
        train_cmd(tmp_path / "run2", "task=vqa", f"data.root={shards}"),
        train_cmd(tmp_path / "run3", "task=vqa", f"data.root={shards}", f"task.answers_file={tmp_path}/x.json")],
        ROOT, env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (shards / "answers.json", shards / "tokenizer.json")}
    assert "derived" not in again.stdout + again.stderr and "trained a BPE" not in again.stdout + again.stderr
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    errors = [ln for ln in missing.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [ln for ln in errors if ln.startswith(f"config error: task.answers_file={tmp_path}/x.json "
                                                           "does not exist")] and len(errors) == 1


def test_classification_from_train_shards_pattern_derives_classes(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    rows = lambda n: [{"color": list(COLORS)[i % 3], "label": f"{list(COLORS)[i % 3]} square"} for i in range(n)]
    summary = convert(write_jsonl(tmp_path / "raw", "train", rows(9)), shards, "train")
    for split in ("val", "test"):
        convert(write_jsonl(tmp_path / "raw", split, rows(4)), shards, split)
    run(train_cmd(tmp_path / "run", "task=image_classify", f"data.train_shards={shards}/{summary['pattern']}"))
    assert json.loads((shards / "classes.json").read_text()) == ["blue square", "green square", "red square"]
    assert (shards / "tokenizer.json").is_file() and not (shards / "answers.json").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"val/image_classify/acc", "test/image_classify/acc"} <= set(metrics)  # val/test follow data.root


# ---- config-level rules (no subprocess) ---------------------------------------------------------------------
def make_cfg(root: str | None, train: str = "${data.root}/train-*.tar", task: dict | None = None):
    return OmegaConf.create({
        "data": {"root": root, "train_shards": train, "val_shards": "${data.root}/val-*.tar",
                 "test_shards": "${data.root}/test-*.tar", "sources": {}},
        "task": task or {"name": "vqa", "answers_file": "${data.root}/answers.json", "answers": None},
        "tokenizer": {"kind": "trained", "path": "${data.root}/tokenizer.json"}})


def test_root_follows_the_training_shards_and_absent_splits_turn_off(tmp_path: Path) -> None:
    for name in ("train-000000.tar", "val-000000.tar"):
        (tmp_path / name).touch()
    cfg = make_cfg(None, train=f"{tmp_path}/train-{{000000..000000}}.tar")
    own_data.fill_root(cfg.data, ["vqa"])
    own_data.drop_absent_splits(cfg.data)
    assert cfg.data.root == str(tmp_path) and cfg.data.val_shards == f"{tmp_path}/val-*.tar"
    assert cfg.data.test_shards is None and cfg.task.answers_file == f"{tmp_path}/answers.json"
    with pytest.raises(RunConfigError, match="data.root is null"):
        own_data.fill_root(make_cfg(None).data, ["vqa"])


def test_explicit_missing_files_are_config_errors(tmp_path: Path) -> None:
    cfg = make_cfg(str(tmp_path), task={"name": "image_classify", "classes_file": "/nope/classes.json"})
    with pytest.raises(RunConfigError, match=r"^task.classes_file=/nope/classes.json does not exist"):
        own_data.plan_derived_files(cfg)
    cfg = make_cfg(str(tmp_path), task={"name": "caption"})
    cfg.tokenizer.path = "/nope/tokenizer.json"
    with pytest.raises(RunConfigError, match=r"^tokenizer.path=/nope/tokenizer.json does not exist"):
        own_data.plan_derived_files(cfg)
    inline = make_cfg(str(tmp_path), task={"name": "vqa", "answers_file": "/nope.json", "answers": ["yes"]})
    inline.tokenizer.kind = "ofa"
    assert own_data.plan_derived_files(inline) == []  # inline answers need no file; ofa's BPE is not derived


def test_mixture_plans_one_scan_per_shard_set(tmp_path: Path) -> None:
    (tmp_path / "train-000000.tar").touch()
    mixture = {"name": "mixture", "tasks": {
        "vqa": {"name": "vqa", "answers_file": "${data.root}/answers.json", "answers": None},
        "image_classify": {"name": "image_classify", "classes_file": "${data.root}/classes.json", "classes": None},
        "caption": {"name": "caption"}}}
    planned = own_data.plan_derived_files(make_cfg(str(tmp_path), task=mixture))
    assert [(p.key, p.what) for p in planned] == [("task.tasks.vqa.answers_file", "answers"),
                                                  ("task.tasks.image_classify.classes_file", "classes"),
                                                  ("tokenizer.path", "tokenizer")]
    assert len({p.urls for p in planned}) == 1 and planned[0].path == tmp_path / "answers.json"
