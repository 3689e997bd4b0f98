"""Image-text scorers: open_clip from a local file equals open_clip's own computation (a tiny model the test
registers, random weights saved here); the synthetic scorer learns the world's captions; rerank; save/load."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from ofa.datamodules.synthetic_world import COLORS, LOCATIONS
from ofa.tasks.image_judge import render_dataset
from ofa.tasks.image_scorers import (
    OpenClipScorer,
    SyntheticClipScorer,
    build_vocab,
    contrastive_loss,
    rerank,
)

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TEXTS = ["a large red circle at the top left", "a small blue square at the center", "an orange triangle", "x"]


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]


# ---- OpenClipScorer --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Registers `tiny-test` (and its QuickGELU twin) with open_clip; yields (name, weights file)."""
    configs = open_clip.factory._MODEL_CONFIGS
    configs["tiny-test"] = TINY
    configs["tiny-test-quickgelu"] = {**TINY, "quick_gelu": True}
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test", pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(model.state_dict(), path)
    yield "tiny-test", path
    del configs["tiny-test"], configs["tiny-test-quickgelu"]


def direct_scores(model_name: str, path, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """open_clip's own pipeline: PIL preprocessing transform, tokenizer, encoders."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(path))
    pixels = torch.stack([preprocess(im) for im in pil_images(images)])
    with torch.no_grad():
        img = model.eval().encode_image(pixels, normalize=True)
        txt = model.encode_text(open_clip.get_tokenizer(model_name)(texts), normalize=True)
    return (img * txt).sum(-1)


def test_open_clip_scorer_equals_open_clip(tiny_clip) -> None:
    name, path = tiny_clip
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scorer = OpenClipScorer(name, path)
    scores = scorer.score(images.float() / 255, TEXTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert bool(((scores >= -1) & (scores <= 1)).all())
    torch.testing.assert_close(scores, direct_scores(name, path, images, TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.score(images, TEXTS), scores)  # uint8 input: same


def test_open_clip_scorer_resizes_like_pil(tiny_clip) -> None:
    """64x48 inputs: bicubic resize of the shorter side + centre crop, as open_clip's PIL transform."""
    name, path = tiny_clip
    images = torch.from_numpy(np.stack([np.asarray(im.resize((64, 48))) for im in
                                        pil_images(render_dataset(4, seed=5)[0])])).permute(0, 3, 1, 2)
    scores = OpenClipScorer(name, path).score(images, TEXTS)
    torch.testing.assert_close(scores, direct_scores(name, path, images, TEXTS), atol=0.02, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_open_clip_scorer_reads_openai_torchscript(tiny_clip, tmp_path) -> None:
    """OpenAI's ViT-B-16.pt is a TorchScript archive: read through torch.jit, QuickGELU switched on."""
    name, path = tiny_clip
    model = open_clip.create_model("tiny-test-quickgelu", pretrained=str(path))
    torch.jit.script(model).save(str(tmp_path / "openai.pt"))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    scores = OpenClipScorer(name, tmp_path / "openai.pt").score(images, TEXTS)
    torch.testing.assert_close(scores, direct_scores("tiny-test-quickgelu", path, images, TEXTS), atol=1e-5, rtol=0)


def test_open_clip_scorer_missing_weights(tiny_clip, tmp_path) -> None:
    missing = tmp_path / "no" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError) as err:
        OpenClipScorer(tiny_clip[0], missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


# ---- SyntheticClipScorer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, list[dict], list[str]]:
    return render_dataset(200, seed=1)


def other_colour(caption: str, attrs: dict, shift: int) -> str:
    colors = list(COLORS)
    other = colors[(colors.index(attrs["color"]) + shift) % len(colors)]
    return caption.replace(f" {attrs['color']} ", f" {other} ")


def test_synthetic_scorer_prefers_the_true_colour(scorer, held_out) -> None:
    images, attrs, captions = held_out
    true = scorer.score(images, captions)
    wrong = scorer.score(images, [other_colour(c, a, 1 + i % 5) for i, (c, a) in enumerate(zip(captions, attrs))])
    assert true.shape == (200,) and bool(((true >= -1) & (true <= 1)).all())
    assert (true > wrong).float().mean() >= 0.9


def test_synthetic_scorer_prefers_the_true_location(scorer, held_out) -> None:
    images, attrs, captions = held_out
    true = scorer.score(images, captions)
    moved = []
    for c, a in zip(captions, attrs):
        here = LOCATIONS[a["cell"][0] * 3 + a["cell"][1]]
        moved.append(c.replace(f"at the {here}", f"at the {LOCATIONS[(LOCATIONS.index(here) + 4) % 9]}"))
    assert (true > scorer.score(images, moved)).float().mean() >= 0.8


def test_rerank_puts_the_matching_image_first(scorer, held_out) -> None:
    """Per caption: its own image among 3 images of other colours -> ranked first for most captions."""
    images, attrs, captions = held_out
    by_colour = {c: [i for i, a in enumerate(attrs) if a["color"] == c] for c in COLORS}
    samples = []
    for i in range(40):
        others = [by_colour[c][0] for c in COLORS if c != attrs[i]["color"]][:3]
        samples.append(images[[*others, i]])  # the true image last
    scores, order = rerank(scorer, torch.stack(samples), captions[:40])
    assert scores.shape == order.shape == (40, 4)
    assert torch.equal(scores.gather(1, order), scores.sort(1, descending=True).values)
    assert (order[:, 0] == 3).float().mean() >= 0.9


def test_synthetic_scorer_save_load(scorer, held_out, tmp_path) -> None:
    images, _, captions = held_out
    scorer.save(tmp_path / "scorer")
    meta = json.loads((tmp_path / "scorer" / "scorer.json").read_text())
    assert meta["vocab"] == scorer.vocab and "red" in meta["vocab"]
    loaded = SyntheticClipScorer.load(tmp_path / "scorer")
    assert torch.equal(loaded.score(images[:16], captions[:16]), scorer.score(images[:16], captions[:16]))
    with pytest.raises(FileNotFoundError, match=r"scorer\.json"):
        SyntheticClipScorer.load(tmp_path / "none")


def test_unknown_words_are_ignored(scorer, held_out) -> None:
    images, _, captions = held_out
    noisy = [f"zzz {c} qqq" for c in captions[:8]]
    torch.testing.assert_close(scorer.score(images[:8], noisy), scorer.score(images[:8], captions[:8]))


def test_build_vocab() -> None:
    assert build_vocab(["A red circle", "an Orange square!"]) == ["<unk>", "a", "an", "circle", "orange", "red",
                                                                  "square"]


def test_contrastive_loss_treats_equal_captions_as_positives() -> None:
    """Rows 0 and 1 share a caption: swapping their text embeddings changes nothing, unlike for two captions."""
    gen = torch.Generator().manual_seed(0)
    images, texts = (torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1) for _ in range(2))
    swapped = texts[[1, 0, 2, 3]]
    scale = torch.tensor(10.0).log()
    same, distinct = torch.tensor([7, 7, 1, 2]), torch.tensor([7, 8, 1, 2])

    def loss(text_emb: torch.Tensor, caption_ids: torch.Tensor) -> float:
        return float(contrastive_loss(images, text_emb, scale, caption_ids))

    assert loss(texts, same) == pytest.approx(loss(swapped, same), abs=1e-6)
    assert abs(loss(texts, distinct) - loss(swapped, distinct)) > 0.01
