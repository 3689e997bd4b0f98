"""An `ofa_nano` trained briefly on the synthetic world (caption, VQA, grounding, classification), shared by the
API, `ofa-predict` and demo tests through the `trained_nano` fixture (tests/conftest.py).

`train_nano(out)` makes its own small world (480 training images: 48 let it memorise instead of learn colour)
and fits the model with Lightning (`OFALitModule` + `OFADataModule`, the training code path) in two phases:
1. classification alone, 150 steps, the default recipe of `python train.py` (`conf/optim/adamw_scratch.yaml`:
   lr 3e-4, `image_proj` x 0.1, `decoder` x 0.3): the image path learns colour (and some shape);
2. the four tasks mixed, 100 steps at lr 2e-3 with the encoder held still (`lr_scale: {encoder: 0.01}`, a fresh
   AdamW): the decoder learns the answers' form (captions of colour/shape words, four box bins) on top of the
   image features of phase 1. At this lr with the encoder free (the old fixture: 100 mixed steps) the model
   learns the text prior and ignores the image: one class for every image.
It returns a `TrainedNano`: the run's `last.ckpt` (a platform `.ckpt` with its model/tokenizer record) and a
`save_pretrained` folder carrying the task settings it was trained with (32-pixel images, the world's answers
and classes). What it has learnt, on held-out images (tests/test_api.py): the large object's colour for about
4 images in 10 (chance 1 in 6); captions in the world's form; boxes inside the image, not on the object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from ofa.checkpoint_io import tokenizer_record
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.datamodules.synthetic import SyntheticConfig, generate_synthetic_dataset
from ofa.lit_module import ModuleConfig, OFALitModule
from ofa.modules.config import OFAConfig
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.grounding import GroundingConfig, GroundingTask
from ofa.tasks.image_classify import ImageClassifyConfig, ImageClassifyTask
from ofa.tasks.vqa import VQAConfig, VQATask
from ofa.tokenizer import build_tokenizer
from ofa.utils.optim import OptimConfig, ScheduleConfig

IMAGE_SIZE = 32
WORLD = dict(num_train=480, num_val=16, num_test=16, image_size=64, shard_size=8, vocab_size=500)  # ~1 s
CLASSIFY_STEPS, MIXTURE_STEPS = 150, 100
SEE = OptimConfig(lr=3e-4, lr_scale={"image_proj": 0.1, "decoder": 0.3})  # phase 1: conf/optim/adamw_scratch.yaml
SPEAK = OptimConfig(lr=2e-3, lr_scale={"encoder": 0.01})  # phase 2: the encoder (and its image path) held still


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


def fit(module: OFALitModule, sources: list[TaskSource], steps: int, out: Path) -> pl.Trainer:
    """`steps` optimizer steps of batch 8 on `sources` (one epoch; a fresh optimizer and schedule each call)."""
    dm = OFADataModule(sources, LoaderConfig(batch_size=8, num_workers=0, batches_per_epoch=steps, shuffle_buffer=16))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(out),
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return trainer


def train_nano(out: Path) -> TrainedNano:
    """Trains into `out`, or returns what an earlier call left there (`out/done`: another pytest-xdist worker)."""
    from ofa.api import OFA

    if (out / "done").exists():
        return TrainedNano(out / "last.ckpt", out / "pretrained", out / "data", task_settings(out / "data"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = generate_synthetic_dataset(out / "data", SyntheticConfig(**WORLD))
    tokenizer = build_tokenizer("trained", data_dir)
    settings = task_settings(data_dir)
    tasks = build_tasks(tokenizer, settings)
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))
    record = tokenizer_record("trained", data_dir / "tokenizer.json", tokenizer)
    torch.manual_seed(0)
    module = OFALitModule(cfg, tasks, SEE, ScheduleConfig(warmup_steps=10), ModuleConfig(), tokenizer_record=record)
    shards = str(data_dir / "train-*.tar")
    fit(module, [TaskSource(tasks["image_classify"], train_shards=shards)], CLASSIFY_STEPS, out)
    module.optim_cfg = SPEAK
    trainer = fit(module, [TaskSource(t, train_shards=shards, weight=2.0 if name == "image_classify" else 1.0)
                           for name, t in tasks.items()], MIXTURE_STEPS, out)
    ckpt = out / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = OFA(module.model, tokenizer, settings, device="cpu").save_pretrained(out / "pretrained")
    (out / "done").touch()
    return TrainedNano(ckpt, folder, data_dir, settings)
