"""Scoring generated images inside the image_gen evaluation (`ofa.tasks.image_eval`): reranking picks the sample
that shows the caption, the metrics see the best sample, the grid is written with captions; attributes and
real images come from the shard records."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ofa.errors import RunConfigError
from ofa.tasks.image_eval import ImageEvaluator, ScorerConfig, attributes_of, real_image
from ofa.tasks.image_judge import render_dataset


def evaluator(judge, scorer, tmp_path: Path) -> ImageEvaluator:
    ev = ImageEvaluator(ScorerConfig(kind="synthetic", path="unused"), "unused", "judge", None, str(tmp_path), 4)
    ev._judge, ev._scorer = judge, scorer  # already trained (the conftest's); no files needed
    return ev


def test_rerank_finds_the_sample_that_shows_the_caption(judge, scorer, tmp_path: Path) -> None:
    images, attrs, captions = render_dataset(6, seed=7)  # uint8 (6, 3, 64, 64)
    real = images.float() / 255
    noise = torch.rand(6, 3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    samples = torch.cat([noise[:, :2], real[:, None], noise[:, 2:]], 1)  # the true image is sample 2 of 4
    ev = evaluator(judge, scorer, tmp_path)
    assert ev.rerank(samples, captions).tolist() == [2] * 6
    metrics = ev.build_metrics()
    metas = [{"attributes": {**a, "cell": a["cell"][0] * 3 + a["cell"][1]}, "real": im} for a, im in zip(attrs, images)]
    best = ev.update(samples, captions, metas, metrics)
    assert torch.equal(best, real)
    assert metrics["judge"].compute()["judge_all"].item() == 1.0
    assert metrics["clip"].compute().item() > 0.3
    path = ev.write_grid("val", 12)
    assert path == tmp_path / "val-step000012.png" and Image.open(path).size == (4 * 128, 1 * 156)
    assert ev.write_grid("val", 13) is None  # the grid was consumed


def test_record_fields(tmp_path: Path) -> None:
    record = {"width": 96, "objects": [{"color": "red", "shape": "circle", "size": "small", "box": [70, 5, 90, 20]}]}
    assert attributes_of(record) == {"color": "red", "shape": "circle", "size": "small", "cell": 2}  # top right
    assert attributes_of({**record, "objects": record["objects"] * 2}) is None  # judged: single-object images
    image = real_image({"image": Image.new("RGB", (100, 80), (10, 20, 30))}, 16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and image[:, 0, 0].tolist() == [10, 20, 30]
    assert real_image({}, 16) is None


def test_bad_settings_are_one_line() -> None:
    with pytest.raises(RunConfigError, match="task.fid=judge needs task.judge"):
        ImageEvaluator(ScorerConfig(), None, "judge", None, None, 4)
    with pytest.raises(RunConfigError, match="task.scorer.kind=open_clip needs task.scorer.path"):
        ImageEvaluator(ScorerConfig(kind="open_clip"), None, "none", None, None, 4)
