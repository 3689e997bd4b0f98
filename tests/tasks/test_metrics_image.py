"""Image metrics: FID / IS from a local InceptionV3 weights file (random weights made here, nothing
downloaded), FID on any feature module against a hand computation, CLIP similarity, judged accuracy."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ofa.safe_load import CheckpointError
from ofa.tasks.image_judge import ImageJudge
from ofa.tasks.image_scorers import ImageTextScorer, SyntheticClipScorer
from ofa.tasks.metrics_image import ClipSimilarity, JudgedAccuracy, JudgeFeatures, fid_metric, inception_score_metric


def random_images(n: int, seed: int, size: int = 32, scale: float = 1.0) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """torch-fidelity's InceptionV3 with random (He-initialised) weights, saved as a plain state dict: its
    constructor always loads weights, so loading is stubbed out while it is built."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        net = fe.FeatureExtractorInceptionV3("random", ["2048"])
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


# ---- FID / IS through the weights file -------------------------------------------------------------------
def test_fid_from_inception_weights_file(inception_weights: str) -> None:
    """Layer "64" (the same network and file; a small covariance keeps the test fast)."""
    fid = fid_metric("64", inception_weights, reset_real_features=False)
    real = random_images(8, seed=0)
    fid.update(real, real=True)
    fid.update((real * 255).round().to(torch.uint8), real=False)  # uint8 and float images alike
    same = float(fid.compute())
    fid.reset()  # keeps the real features
    fid.update(random_images(8, seed=1, scale=0.5), real=False)
    different = float(fid.compute())
    assert math.isfinite(different) and different > 0.1 and abs(same) < 1e-4 * different


def test_default_fid_is_pool3_and_not_checkpointed(inception_weights: str) -> None:
    fid = fid_metric("inception", inception_weights)
    assert fid.inception.num_features == 2048 and fid.state_dict() == {}
    fid.to(torch.float64)  # the unregistered network still follows the module
    assert fid.inception.net.Conv2d_1a_3x3.conv.weight.dtype == torch.float64


@pytest.mark.filterwarnings("ignore:Metric `InceptionScore` will save")
def test_inception_score_from_weights_file(inception_weights: str) -> None:
    score = inception_score_metric("inception", inception_weights, splits=2)
    score.update(random_images(6, seed=2))
    mean, std = score.compute()
    assert math.isfinite(float(mean)) and float(mean) >= 1 - 1e-6 and math.isfinite(float(std))


def test_missing_inception_weights(tmp_path) -> None:
    missing = tmp_path / "pt_inception.pth"
    for build in (fid_metric, inception_score_metric):
        with pytest.raises(FileNotFoundError) as err:
            build("inception", missing)
        assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="weights_path"):
        fid_metric("inception")


class _NotWeights:
    pass


def test_refuses_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": _NotWeights()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        fid_metric("inception", path)


# ---- FID on a custom feature module ----------------------------------------------------------------------
class MeanColour(nn.Module):
    """(B, 3): the mean colour of each image."""

    num_features = 3

    def forward(self, images: Tensor) -> Tensor:
        return images.float().mean((2, 3))


def hand_fid(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2)), unbiased covariances."""
    def sqrtm(m: Tensor) -> Tensor:
        vals, vecs = torch.linalg.eigh(m)
        return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T

    a, b = a.double(), b.double()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    root = sqrtm(sa)
    return float((a.mean(0) - b.mean(0)).square().sum() + sa.trace() + sb.trace() - 2 * sqrtm(root @ sb @ root).trace())


def test_fid_on_a_feature_module_matches_the_formula() -> None:
    real, fake = random_images(20, seed=3), random_images(20, seed=4, scale=0.8)
    fid = fid_metric(MeanColour())
    fid.update(real[:10], real=True)
    fid.update(real[10:], real=True)  # accumulated over updates
    fid.update(fake, real=False)
    assert float(fid.compute()) == pytest.approx(hand_fid(MeanColour()(real), MeanColour()(fake)), rel=1e-4)


def test_fid_on_judge_features() -> None:
    """Any `ImageJudge` is read through `JudgeFeatures` (an untrained one here); it stays out of state_dict."""
    judge = ImageJudge().eval()
    fid = fid_metric(judge, reset_real_features=False)
    assert isinstance(fid.inception, JudgeFeatures) and fid.inception.num_features == judge.feature_dim
    assert not any(k.startswith("inception") for k in fid.state_dict())
    real = random_images(16, seed=5, size=64)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(random_images(16, seed=6, size=64, scale=0.3), real=False)
    assert abs(same) < 1e-3 < float(fid.compute())


# ---- CLIP similarity -------------------------------------------------------------------------------------
class MeanPixelScorer(ImageTextScorer):
    """score = the image's mean pixel value (the text is ignored); counts its calls."""

    calls = 0

    def score(self, images: Tensor, texts) -> Tensor:
        assert images.shape[0] == len(texts)
        MeanPixelScorer.calls += 1
        return images.float().flatten(1).mean(1)


def constant_images(values: list[float]) -> Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


def test_clip_similarity_mean_of_chosen_images() -> None:
    metric = ClipSimilarity(MeanPixelScorer())
    metric.update(constant_images([0.2, 0.4]), ["a", "b"])
    metric.update(constant_images([0.9]), ["c"])
    assert float(metric.compute()) == pytest.approx((0.2 + 0.4 + 0.9) / 3)


def test_clip_similarity_max_over_samples() -> None:
    """(B, N, 3, H, W): the best of each caption's N samples, as OFA reports."""
    samples = torch.stack([constant_images([0.1, 0.7, 0.3]), constant_images([0.5, 0.2, 0.4])])
    metric = ClipSimilarity(MeanPixelScorer())
    metric.update(samples, ["a", "b"])
    assert float(metric.compute()) == pytest.approx((0.7 + 0.5) / 2)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_clip_similarity_loads_the_scorer_lazily() -> None:
    loads = []
    metric = ClipSimilarity(lambda: loads.append(1) or MeanPixelScorer())
    assert not loads and math.isnan(float(metric.compute()))
    metric.update(constant_images([0.5]), ["a"])
    metric.update(constant_images([0.5]), ["a"])
    assert loads == [1]


def test_clip_similarity_keeps_the_scorer_out_of_state_dict() -> None:
    scorer = SyntheticClipScorer(["<unk>", "red"]).eval()
    metric = ClipSimilarity(scorer)
    assert dict(metric.named_parameters()) == {} and metric.state_dict() == {}
    metric.update(random_images(2, seed=7, size=64), ["red", "red"])
    assert -1 <= float(metric.compute()) <= 1


# ---- judged accuracy -------------------------------------------------------------------------------------
class FixedJudge:
    """Predicts the given classes for the images (their first pixel's red value indexes the rows)."""

    def __init__(self, predictions: dict[str, list[int]]) -> None:
        self.predictions = {k: torch.tensor(v) for k, v in predictions.items()}

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        rows = images[:, 0, 0, 0].long()
        return {k: v[rows] for k, v in self.predictions.items()}


def indexed_images(rows: list[int]) -> Tensor:
    return torch.tensor(rows, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


JUDGE = FixedJudge({"color": [0, 1, 2, 3], "shape": [0, 1, 2, 0], "cell": [0, 1, 2, 8], "size": [0, 0, 1, 1]})
INTENDED = [{"color": "red", "shape": "circle", "size": "small", "cell": [0, 0]},  # all right
            {"color": "green", "shape": "square", "size": "small", "cell": 1},  # all right
            {"color": "blue", "shape": "circle", "size": "small", "cell": [0, 2]},  # shape and size wrong
            {"color": "yellow", "shape": "circle", "size": "large", "cell": [2, 2]}]  # all right


def test_judged_accuracy_counts() -> None:
    metric = JudgedAccuracy(JUDGE)
    metric.update(indexed_images([0, 1]), INTENDED[:2])
    metric.update(indexed_images([2, 3]), INTENDED[2:])
    result = {k: float(v) for k, v in metric.compute().items()}
    assert result == {"color": 1.0, "shape": 0.75, "cell": 1.0, "size": 0.75, "all": 0.75}


def test_judged_accuracy_sums_across_processes() -> None:
    """Two processes' states merge by summing (what DDP's sync does)."""
    first, second = JudgedAccuracy(JUDGE), JudgedAccuracy(lambda: JUDGE)
    first.update(indexed_images([0, 2]), [INTENDED[0], INTENDED[2]])
    second.update(indexed_images([1, 3]), [INTENDED[1], INTENDED[3]])
    first.merge_state(second)
    assert float(first.compute()["all"]) == 0.75 and int(first.count) == 4


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_judged_accuracy_empty_is_nan() -> None:
    assert all(math.isnan(float(v)) for v in JudgedAccuracy(JUDGE).compute().values())
