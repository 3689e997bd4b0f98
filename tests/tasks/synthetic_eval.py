"""Shared by the task tests: evaluate a task on a few synthetic samples with a random ofa_nano."""
from __future__ import annotations

import io

import torch
from PIL import Image

from ofa.datamodules.collate import collate
from ofa.datamodules.synthetic import SyntheticConfig, make_sample
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel


def evaluate_on_synthetic(task, tokenizer, num: int, image_size: int = 64) -> tuple[list[dict], dict]:
    """Preprocess `num` synthetic val samples, evaluate them with a seeded random ofa_nano; (rows, metrics)."""
    samples = []
    for i in range(num):
        record, jpeg = make_sample(SyntheticConfig(image_size=image_size), "val", i)
        samples.append(task.preprocess({**record, "image": Image.open(io.BytesIO(jpeg)).convert("RGB")}, "val"))
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))).eval()
    metrics = task.build_metrics()
    rows = task.evaluate(model, collate(samples, tokenizer.pad), metrics)
    return rows, metrics
