"""Metrics of generated images as torchmetrics (states summed across processes); docs/IMAGE_EVAL.md.

- `fid_metric`: FID (torchmetrics `FrechetInceptionDistance`) on torch-fidelity's InceptionV3 with weights
  from a local file, or on any feature module (the synthetic world's judge: `JudgeFeatures`).
- `inception_score_metric`: IS (torchmetrics `InceptionScore`) on the same InceptionV3 (or a logits module).
- `ClipSimilarity`: OFA's CLIP score, the mean cosine similarity of each caption's chosen image with it.
- `JudgedAccuracy`: how often the synthetic world's judge reads the intended colour, shape and cell.

Images are float (B, 3, H, W) in [0, 1] or uint8 in [0, 255] everywhere (converted as each model needs).
Scorers and judges are held by reference, not as submodules: their weights stay out of checkpoints and on
their own device (inputs are moved to it). Each may also be given as a function returning it, called on
first use (so a metric can be built before its model is loaded).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from ofa.tasks.image_judge import ATTRIBUTES, ImageJudge, encode_labels, judge_counts
from ofa.tasks.image_scorers import ImageTextScorer
from ofa.tasks.metrics_understanding import _MeanMetric

INCEPTION_LAYERS = ("64", "192", "768", "2048", "logits_unbiased", "logits")


def to_uint8_images(images: Tensor) -> Tensor:
    """float [0, 1] -> uint8 [0, 255] (clamped, rounded); uint8 passes through."""
    return images if images.dtype == torch.uint8 else images.clamp(0, 1).mul(255).round().to(torch.uint8)


def _resolve(source: Any, attribute: str) -> Any:
    """The model itself, or the result of calling `source` when it lacks `attribute` (lazy loading)."""
    return source if hasattr(source, attribute) else source()


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 (torchmetrics' `NoTrainInceptionV3`: eval mode, bilinear resize to
    299x299 with antialiasing, (x - 128) / 128) with weights from a LOCAL file, never downloaded.

    `weights_path`: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (the TF FID Inception,
    as used by pytorch-fid / OFA's `fid_score.py`), a plain state dict. It is first read with
    `ofa.safe_load.safe_torch_load` (tensors and plain containers only) before torch-fidelity loads it.
    `layer`: "2048" (pool3, FID), "logits_unbiased" (IS) or another of `INCEPTION_LAYERS`. The network is
    not registered as a submodule (so not in the metric's `state_dict`, unlike torchmetrics' own), yet moves
    with the module.
    """

    def __init__(self, weights_path: str | Path, layer: str = "2048") -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        from ofa.safe_load import safe_torch_load

        if layer not in INCEPTION_LAYERS:
            raise ValueError(f"InceptionV3 layer {layer!r}: expected one of {INCEPTION_LAYERS}")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"InceptionV3 weights not found: {path}")
        safe_torch_load(path)  # refuses any pickle global other than tensors / plain containers, unrun
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[layer],
                                 feature_extractor_weights_path=str(path))
        object.__setattr__(self, "net", net)  # not a submodule: its fixed 95 MB stay out of checkpoints ...
        self.num_features = 1008 if layer.startswith("logits") else int(layer)

    def _apply(self, fn, recurse: bool = True):  # ... but it follows `.to(device)` / `.cuda()`
        self.net._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(to_uint8_images(images))  # (B, num_features)


class JudgeFeatures(nn.Module):
    """The judge's penultimate features (`ImageJudge.features`, (B, F)) as an FID feature extractor.

    `judge`: an `ImageJudge` or a function returning one (called on first use); held by reference.
    """

    def __init__(self, judge: ImageJudge | Callable[[], ImageJudge]) -> None:
        super().__init__()
        object.__setattr__(self, "_judge_source", judge)  # not a submodule: stays out of state_dict

    @property
    def judge(self) -> ImageJudge:
        judge = _resolve(self._judge_source, "features")
        object.__setattr__(self, "_judge_source", judge)
        return judge

    @property
    def num_features(self) -> int:
        return self.judge.feature_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.judge.features(images)  # (B, F) on the images' device


def _feature_module(feature: str | nn.Module, weights_path: str | Path | None, default_layer: str) -> nn.Module:
    if isinstance(feature, ImageJudge):
        return JudgeFeatures(feature)
    if isinstance(feature, nn.Module):
        return feature
    layer = default_layer if feature == "inception" else str(feature)
    if weights_path is None:
        raise ValueError(f"Inception feature {feature!r} needs weights_path: a local torch-fidelity InceptionV3 "
                         "weights file (weights-inception-2015-12-05-6726825d.pth); nothing is downloaded")
    return InceptionFeatures(weights_path, layer)


def fid_metric(feature: str | nn.Module = "inception", weights_path: str | Path | None = None,
               **kwargs: Any) -> FrechetInceptionDistance:
    """torchmetrics FID; `update(images, real: bool)`, `compute()` -> scalar.

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between the Gaussians fitted to the features
    of the real and the generated images (means and unbiased covariances accumulated in float64 as sums, so
    processes add up; the matrix square root's trace = sum of sqrt of the eigenvalues of S_r S_g).
    `feature`: "inception" (= the 2048-d pool3 of torch-fidelity's InceptionV3 from `weights_path`, the
    standard FID), an Inception layer name ("64", "192", "768", "2048"), an `ImageJudge` (its penultimate
    features: an FID of the synthetic world, in the judge's units, not comparable with Inception FIDs), or
    any module mapping images to (B, F). `kwargs` go to `FrechetInceptionDistance` (`reset_real_features`).
    """
    return FrechetInceptionDistance(feature=_feature_module(feature, weights_path, "2048"), **kwargs)


def inception_score_metric(feature: str | nn.Module = "inception", weights_path: str | Path | None = None,
                           splits: int = 10, **kwargs: Any) -> InceptionScore:
    """torchmetrics IS; `update(images)`, `compute()` -> (mean, std) over `splits`.

    IS = exp(E_x KL(p(y|x) || p(y))) with p(y|x) = softmax of the 1008 unbiased logits of torch-fidelity's
    InceptionV3 (from `weights_path`; "inception" = "logits_unbiased"), p(y) the mean of p(y|x) within a
    split: the images are randomly permuted (torch's global RNG), cut into `splits` chunks, the score of each
    chunk computed, and the mean and std over the chunks returned (as OFA's `inception_score.py`, 10 splits).
    `feature` may also be a module mapping images to logits (B, C).
    """
    return InceptionScore(feature=_feature_module(feature, weights_path, "logits_unbiased"), splits=splits,
                          normalize=False, **kwargs)


class ClipSimilarity(_MeanMetric):
    """OFA's CLIP score: the mean over captions of cos(image embedding, caption embedding) of the image
    chosen for the caption (`scorer.score`; a raw cosine in [-1, 1], not x100 or x2.5).

    `update(images (B, 3, H, W), texts)` with the chosen image of each caption (OFA: the best of its N
    samples by this very similarity), or `update(samples (B, N, 3, H, W), texts)`: the max over the N
    samples is taken here. `scorer`: an `ImageTextScorer` or a function returning one (first use).
    """

    higher_is_better = True

    def __init__(self, scorer: ImageTextScorer | Callable[[], ImageTextScorer], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_scorer_source", scorer)  # not a submodule: stays out of state_dict

    @property
    def scorer(self) -> ImageTextScorer:
        scorer = _resolve(self._scorer_source, "score")
        object.__setattr__(self, "_scorer_source", scorer)
        return scorer

    def update(self, images: Tensor, texts: Sequence[str]) -> None:
        if images.dim() == 5:  # (B, N, 3, H, W): the best sample of each caption
            b, n = images.shape[:2]
            sims = self.scorer.score(images.flatten(0, 1), [t for t in texts for _ in range(n)]).view(b, n).amax(1)
        else:
            sims = self.scorer.score(images, texts)
        self._add(sims.detach())


class JudgedAccuracy(Metric):
    """How often the judge reads the intended attributes of the generated images.

    `update(images, labels)`: labels {name: (B,) long} or per-image attribute dicts (`encode_labels`).
    States: the number of images, and of images whose `color` / `shape` / `cell` / `size` the judge
    predicts as intended, and of those with colour AND shape AND cell all right (`all`); summed across
    processes. `compute()` -> {color, shape, cell, size, all}: each count / number of images (NaN if none),
    the keys prefixed with `prefix` (the image_gen task logs `judge_all`, ...).
    `judge`: an `ImageJudge` or a function returning one (first use).
    """

    full_state_update = False
    higher_is_better = True
    KEYS = (*ATTRIBUTES, "all")

    def __init__(self, judge: ImageJudge | Callable[[], ImageJudge], prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_judge_source", judge)  # not a submodule: stays out of state_dict
        self.prefix = prefix
        for key in (*self.KEYS, "count"):
            self.add_state(key, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def judge(self) -> ImageJudge:
        judge = _resolve(self._judge_source, "predict")
        object.__setattr__(self, "_judge_source", judge)
        return judge

    def update(self, images: Tensor, labels: Mapping[str, Tensor] | Sequence[Mapping]) -> None:
        if not isinstance(labels, Mapping):
            labels = encode_labels(labels)
        counts = judge_counts(self.judge.predict(images), labels)
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, Tensor]:
        n = self.count.double()
        return {self.prefix + k: (getattr(self, k) / n).float() if n > 0 else torch.tensor(float("nan"))
                for k in self.KEYS}
