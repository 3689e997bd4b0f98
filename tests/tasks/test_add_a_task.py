"""docs/ARCHITECTURE.md "How to add a task", followed literally: one task file, one config file, one line in
`TASKS` — then the real train.py trains, validates and tests it. The throwaway task is text-only, so this
also runs the text-only input path (zero image, patch_mask False) end to end."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from subprocess_runs import ROOT, run_command

TASK_FILE = '''
"""A throwaway text-only task: ` what is the first word of " {caption} "?` -> the first word."""
from dataclasses import dataclass, field

import torch

from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.metrics_understanding import ExactMatchAccuracy


@dataclass
class FirstWordConfig(TaskConfig):
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(beam_size=1, max_len_b=4))


class FirstWordTask(Task):
    name = "first_word"
    monitor = "acc"
    config_class = FirstWordConfig

    def preprocess(self, raw, split):
        if not raw.get("captions"):
            return None
        text = self.pick(raw["captions"], split)
        source = self.encode_text(f' what is the first word of " {text} "?', bos=True, eos=True)
        word = text.split()[0]
        return self.make_sample(raw, source, self.encode_text(" " + word), None, meta={"answer": word})

    def build_metrics(self):
        return {"acc": ExactMatchAccuracy()}

    @torch.no_grad()
    def evaluate(self, model, batch, metrics):
        tok = self.tokenizer
        hyps = SequenceGenerator(model, self.cfg.generation, pad=tok.pad, bos=tok.bos, eos=tok.eos).generate(
            batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
        preds = [tok.decode(h[0].tokens.tolist()).strip() if h else "" for h in hyps]
        answers = [m["answer"] for m in batch["meta"]]
        metrics["acc"].update(preds, answers)
        return [{"id": i, "prediction": p, "answer": a} for i, p, a in zip(batch["id"], preds, answers)]
'''

CONFIG_FILE = """
defaults:
  - /schema/task/first_word@_here_
  - _self_

name: first_word
monitor: acc
max_tgt_length: 4
"""

# The one line a real task adds to ofa/tasks/__init__.py's TASKS, done here before train.py starts.
LAUNCHER = """
import runpy, sys
sys.path.insert(0, {plugin!r})
import ofa.tasks
from first_word import FirstWordTask
ofa.tasks.TASKS["first_word"] = FirstWordTask
sys.argv = ["train.py", *{args!r}]
runpy.run_path({train!r}, run_name="__main__")
"""


def test_a_new_task_is_one_file_one_config_one_registry_line(synthetic_data_dir: Path, tmp_path: Path) -> None:
    plugin, conf = tmp_path / "plugin", tmp_path / "conf" / "task"
    plugin.mkdir()
    conf.mkdir(parents=True)
    (plugin / "first_word.py").write_text(textwrap.dedent(TASK_FILE))
    (conf / "first_word.yaml").write_text(textwrap.dedent(CONFIG_FILE))
    run_dir = tmp_path / "run"
    args = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "task=first_word", f"hydra.run.dir={run_dir}",
            f"data.root={synthetic_data_dir}", "data.synthetic_dir=null", "data.num_workers=0",
            "data.batch_size=4", "data.eval_batch_size=8", f"tokenizer.path={synthetic_data_dir}/tokenizer.json",
            "model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=1", "model.encoder_ffn_dim=64",
            "model.decoder_ffn_dim=64", "model.encoder_attention_heads=2", "model.decoder_attention_heads=2",
            "debug=fdr", "logger=none"]
    code = LAUNCHER.format(plugin=str(plugin), args=args, train=str(ROOT / "train.py"))
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = run_command([sys.executable, "-c", code], ROOT, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/first_word/acc", "val/first_word/loss", "test/first_word/acc"} <= set(metrics)
    assert 0.0 <= metrics["test/first_word/acc"] <= 1.0
