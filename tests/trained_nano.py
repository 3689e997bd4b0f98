"""An `ofa_nano` trained briefly on the synthetic world (caption, VQA, grounding, classification mixed), shared
by the API, `ofa-predict` and demo tests through the `trained_nano` fixture (tests/conftest.py).

`train_nano(data_dir, out)` fits it with Lightning (`OFALitModule` + `OFADataModule`, the training code path)
and returns a `TrainedNano`: the run's `last.ckpt` (a platform `.ckpt` with its model/tokenizer record) and a
`save_pretrained` folder carrying the task settings it was trained with (32-pixel images, the world's
answers and classes). About 100 steps: the answers have the world's form (captions of colour/shape words,
boxes inside the image), not its truth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from ofa.checkpoint_io import tokenizer_record
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.lit_module import ModuleConfig, OFALitModule
from ofa.modules.config import OFAConfig
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.grounding import GroundingConfig, GroundingTask
from ofa.tasks.image_classify import ImageClassifyConfig, ImageClassifyTask
from ofa.tasks.vqa import VQAConfig, VQATask
from ofa.tokenizer import build_tokenizer
from ofa.utils.optim import OptimConfig, ScheduleConfig

IMAGE_SIZE = 32
STEPS = 100


@dataclass
class TrainedNano:
    ckpt: Path  # the run's last.ckpt
    folder: Path  # save_pretrained folder (weights, config, tokenizer.json, tasks.json)
    data_dir: Path
    settings: dict  # the task settings it was trained with


def task_settings(data_dir: Path) -> dict[str, dict]:
    answers = json.loads((data_dir / "answers.json").read_text())
    classes = json.loads((data_dir / "classes.json").read_text())
    size = {"image_size": IMAGE_SIZE}
    return {"caption": {**size, "meteor": False, "ptb_tokenizer": False}, "vqa": {**size, "answers": answers},
            "grounding": {**size, "max_image_size": IMAGE_SIZE}, "image_classify": {**size, "classes": classes},
            "snli_ve": size}


def build_tasks(tokenizer, settings: dict) -> dict:
    return {"caption": CaptionTask(tokenizer, CaptionConfig(**settings["caption"])),
            "vqa": VQATask(tokenizer, VQAConfig(**settings["vqa"])),
            "grounding": GroundingTask(tokenizer, GroundingConfig(**settings["grounding"])),
            "image_classify": ImageClassifyTask(tokenizer, ImageClassifyConfig(**settings["image_classify"]))}


def train_nano(data_dir: Path, out: Path, steps: int = STEPS) -> TrainedNano:
    from ofa.api import OFA

    tokenizer = build_tokenizer("trained", data_dir)
    settings = task_settings(data_dir)
    tasks = build_tasks(tokenizer, settings)
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))
    record = tokenizer_record("trained", data_dir / "tokenizer.json", tokenizer)
    module = OFALitModule(cfg, tasks, OptimConfig(lr=2e-3), ScheduleConfig(warmup_steps=10), ModuleConfig(),
                          tokenizer_record=record)
    sources = [TaskSource(t, train_shards=str(data_dir / "train-*.tar"), val_shards=str(data_dir / "val-*.tar"),
                          weight=2.0 if name == "image_classify" else 1.0) for name, t in tasks.items()]
    dm = OFADataModule(sources, LoaderConfig(batch_size=8, num_workers=0, batches_per_epoch=steps,
                                             shuffle_buffer=16))
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(out), limit_val_batches=0,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = OFA(module.model, tokenizer, settings, device="cpu").save_pretrained(out / "pretrained")
    return TrainedNano(ckpt, folder, data_dir, settings)
