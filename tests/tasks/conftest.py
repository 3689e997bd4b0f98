"""Shared by the image-generation tests: the synthetic world's judge and scorer, trained once per session on
rendered single-shape images (about 10 s each on one thread)."""
from __future__ import annotations

import pytest

from ofa.tasks.image_judge import ImageJudge, encode_labels, render_dataset, train_judge
from ofa.tasks.image_scorers import SyntheticClipScorer, train_synthetic_scorer


@pytest.fixture(scope="session")
def judge() -> ImageJudge:
    images, attrs, _ = render_dataset(1500, seed=0)
    return train_judge(images, encode_labels(attrs), steps=200, batch_size=32, seed=0)


@pytest.fixture(scope="session")
def scorer() -> SyntheticClipScorer:
    images, _, captions = render_dataset(1200, seed=0)
    return train_synthetic_scorer(images, captions, steps=100, batch_size=64, lr=5e-3, seed=0)
