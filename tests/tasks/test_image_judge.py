"""The synthetic world's judge: reads held-out real (and blurred) images right, refuses noise and wrong colours,
saves/loads without pickle; `judge_accuracy` counts `all` without size; the judge's features give an FID."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ofa.datamodules.synthetic_world import COLORS, LOCATIONS, SIZES, _place, render, render_single_object
from ofa.tasks.image_judge import (
    ATTRIBUTES,
    ImageJudge,
    encode_labels,
    judge_accuracy,
    judge_counts,
    render_dataset,
)
from ofa.tasks.metrics_image import JudgedAccuracy, fid_metric


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, list[dict]]:
    images, attrs, _ = render_dataset(400, seed=1)
    return images, attrs


def test_render_single_object() -> None:
    image, attrs, caption = render_single_object(random.Random(3), 64)
    assert image.size == (64, 64) and set(attrs) == {"color", "shape", "size", "cell", "box"}
    x0, y0, x1, y1 = attrs["box"]
    row, col = attrs["cell"]
    assert (int((y0 + y1) / 2 // (64 / 3)), int((x0 + x1) / 2 // (64 / 3))) == (row, col)
    location = LOCATIONS[row * 3 + col]
    assert caption.endswith(f"{attrs['size']} {attrs['color']} {attrs['shape']} at the {location}")
    assert caption.split()[0] in ("a", "an")
    again = render_single_object(random.Random(3), 64)
    assert again[1:] == (attrs, caption) and np.array_equal(np.asarray(again[0]), np.asarray(image))


def test_held_out_accuracy(judge: ImageJudge, held_out) -> None:
    images, attrs = held_out
    acc = judge_accuracy(judge.predict(images), encode_labels(attrs))
    assert acc["all"] >= 0.98 and acc["size"] >= 0.98, acc


def test_reads_blurred_images(judge: ImageJudge, held_out) -> None:
    """VQGAN-like loss of detail: down to half size and back, plus a little noise."""
    images, attrs = held_out
    x = images.float() / 255
    x = F.interpolate(F.interpolate(x, size=32, mode="bilinear", antialias=True), size=64, mode="bilinear")
    x = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.02).clamp(0, 1)
    assert judge_accuracy(judge.predict(x), encode_labels(attrs))["all"] >= 0.95


def test_rejects_noise_and_wrong_colours(judge: ImageJudge, held_out) -> None:
    images, attrs = held_out
    labels = encode_labels(attrs)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    assert judge_accuracy(judge.predict(noise), labels)["all"] <= 0.05
    rng, colors = random.Random(0), list(COLORS)
    recoloured = []  # the same objects drawn in another colour: shape and cell right, colour wrong
    for a in attrs:
        other = colors[(colors.index(a["color"]) + rng.randrange(1, len(colors))) % len(colors)]
        obj = _place(rng, other, a["shape"], a["size"], tuple(a["cell"]), 64)
        recoloured.append(np.asarray(render([obj], (255, 255, 255), 64)))
    wrong = torch.from_numpy(np.stack(recoloured)).permute(0, 3, 1, 2)
    acc = judge_accuracy(judge.predict(wrong), labels)
    assert acc["all"] <= 0.05 and acc["shape"] >= 0.95 and acc["cell"] >= 0.95, acc


def test_other_image_sizes(judge: ImageJudge) -> None:
    """Any size >= 32 is resized to the judge's 64."""
    for size, floor in ((32, 0.85), (96, 0.9)):
        images, attrs, _ = render_dataset(100, seed=2, image_size=size)
        preds = judge.predict(images)
        assert all(v.shape == (100,) for v in preds.values())
        assert judge_accuracy(preds, encode_labels(attrs))["all"] >= floor
    assert judge.features(images).shape == (100, judge.feature_dim)


def test_uint8_and_float_agree(judge: ImageJudge, held_out) -> None:
    images = held_out[0][:16]
    assert torch.allclose(judge.features(images), judge.features(images.float() / 255))


def test_save_load(judge: ImageJudge, held_out, tmp_path) -> None:
    judge.save(tmp_path / "judge")
    assert json.loads((tmp_path / "judge" / "judge.json").read_text())["attributes"] == ATTRIBUTES
    loaded = ImageJudge.load(tmp_path / "judge")
    images = held_out[0][:32]
    assert torch.equal(loaded.features(images), judge.features(images))
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        ImageJudge.load(tmp_path / "nowhere")
    assert "\n" not in str(err.value)


def test_encode_labels() -> None:
    labels = encode_labels([{"color": "blue", "shape": "square", "size": "large", "cell": [2, 1]},
                            {"color": 0, "shape": 2, "size": 0, "cell": 4}])
    assert labels["color"].tolist() == [list(COLORS).index("blue"), 0]
    assert labels["shape"].tolist() == [1, 2] and labels["cell"].tolist() == [7, 4]
    assert labels["size"].tolist() == [list(SIZES).index("large"), 0]


def test_judge_accuracy_leaves_size_out_of_all() -> None:
    labels = {"color": torch.tensor([0, 1, 2, 3]), "shape": torch.tensor([0, 1, 2, 0]),
              "cell": torch.tensor([0, 1, 2, 3]), "size": torch.tensor([0, 1, 0, 1])}
    preds = {"color": torch.tensor([0, 1, 2, 5]), "shape": torch.tensor([0, 1, 0, 0]),
             "cell": torch.tensor([0, 1, 2, 3]), "size": torch.tensor([1, 0, 0, 1])}
    assert judge_accuracy(preds, labels) == {"color": 0.75, "shape": 0.75, "cell": 1.0, "size": 0.5, "all": 0.5}
    assert judge_counts(preds, labels)["count"] == 4


def test_judged_accuracy_metric_and_feature_fid(judge: ImageJudge, held_out) -> None:
    """End to end with the trained judge: the metric equals `judge_accuracy`; on the judge's features real
    images are far closer to other real images than blurred ones are, and noise is farthest."""
    images, attrs = held_out
    metric = JudgedAccuracy(lambda: judge)
    metric.update(images[:150], attrs[:150])
    metric.update(images[150:], encode_labels(attrs[150:]))
    expected = judge_accuracy(judge.predict(images), encode_labels(attrs))
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(expected)

    def fid(fake: torch.Tensor) -> float:
        m = fid_metric(judge)
        m.update(images[:200], real=True)
        m.update(fake, real=False)
        return float(m.compute())

    x = images[200:].float() / 255
    blurred = F.interpolate(F.interpolate(x, size=16, mode="bilinear", antialias=True), size=64, mode="bilinear")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    real, blur, rand = fid(images[200:]), fid(blurred), fid(noise)
    assert real < blur < rand, (real, blur, rand)
