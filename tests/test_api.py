"""ofa.api: every loader path gives the model it came from, save_pretrained round trips bit for bit, each
high-level call on the trained ofa_nano (tests/trained_nano.py) answers in the right types, shapes and form, and
what it has learnt shows: it reads the colour of held-out images."""
from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import ofa
from ofa.api import OFA
from ofa.api.load import settings_of_run
from ofa.checkpoint import export_hf
from ofa.datamodules.synthetic import SyntheticConfig, make_sample
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.safe_load import CheckpointError

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")


def world_samples(n: int = 4) -> list[tuple[dict, Image.Image]]:
    """(record, image) of the synthetic world's first `n` val samples (64x64)."""
    return [sample("val", i) for i in range(n)]


def sample(split: str, index: int) -> tuple[dict, Image.Image]:
    record, jpeg = make_sample(SyntheticConfig(image_size=64), split, index)
    return record, Image.open(io.BytesIO(jpeg)).convert("RGB")


def balanced_by_colour(per_colour: int) -> list[tuple[dict, Image.Image]]:
    """The first `per_colour` images of each colour (of the large object) of the world's test split: no
    constant answer gets more than 1/6 right. Never training images (another split)."""
    picked: dict[str, list] = {c: [] for c in COLOURS}
    for i in range(1000):
        record, image = sample("test", i)
        bucket = picked[record["label"].split()[0]]
        if len(bucket) < per_colour:
            bucket.append((record, image))
        if all(len(b) == per_colour for b in picked.values()):
            return [s for c in COLOURS for s in picked[c]]
    raise AssertionError("the test split lacks a colour")


@pytest.fixture(scope="module")
def model(trained_nano) -> OFA:
    return ofa.from_pretrained(trained_nano.folder, device="cpu")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [im for _, im in world_samples()]


def outputs(m: OFA, images: list[Image.Image]) -> tuple[torch.Tensor, list[str]]:
    """Logits of one teacher-forced forward and greedy captions: what 'the same model' must reproduce."""
    task = m.task("caption")
    from ofa.datamodules.collate import collate

    batch = collate([task.preprocess({"id": str(i), "image": im, "captions": ["a red circle"]}, "val")
                     for i, im in enumerate(images)], m.tokenizer.pad)
    with torch.no_grad():
        logits = m.model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])
    return logits, m.caption(images, beam_size=2)


def fairseq_pt(m: OFA, path: Path) -> Path:
    """An official-style `.pt` (fairseq args + `model` state dict) of `m`'s weights; carries no vocabulary."""
    c = m.model.cfg
    args = dict(arch="ofa_nano", encoder_embed_dim=c.d_model, decoder_embed_dim=c.d_model,
                encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
                encoder_attention_heads=c.encoder_attention_heads, decoder_attention_heads=c.decoder_attention_heads,
                encoder_ffn_embed_dim=c.encoder_ffn_dim, decoder_ffn_embed_dim=c.decoder_ffn_dim,
                max_source_positions=c.max_source_positions, max_target_positions=c.max_target_positions,
                token_bucket_size=c.token_bucket_size, image_bucket_size=c.image_bucket_size,
                resnet_type=c.resnet_type, code_image_size=c.code_image_size, dropout=c.dropout, attention_dropout=c.attention_dropout,
                scale_attn=c.normformer, scale_fc=c.normformer, scale_heads=c.normformer)
    torch.save({"args": argparse.Namespace(**args), "model": m.model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def random_model(model) -> OFA:
    """A random ofa_nano of a size the HF port can express (its ResNet: stock resnet18 stages)."""
    torch.manual_seed(0)
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(model.tokenizer), resnet_layers=None)
    return OFA(OFAModel(cfg), model.tokenizer, model.task_settings, device="cpu")


def test_run_checkpoint_and_platform_folder_give_the_trained_model(trained_nano, model, images) -> None:
    want_logits, want_captions = outputs(model, images)
    for path in (trained_nano.ckpt, trained_nano.folder):
        loaded = ofa.from_pretrained(path, device="cpu", image_size=32)
        assert loaded.model.cfg == model.model.cfg, path
        logits, captions = outputs(loaded, images)
        assert torch.equal(logits, want_logits) and captions == want_captions, path


def test_fairseq_pt_and_hf_folder_give_the_model_they_came_from(random_model, images, tmp_path) -> None:
    m = random_model
    want_logits, want_captions = outputs(m, images)
    tokenizer_json = m.tokenizer.save(tmp_path / "tok" / "tokenizer.json").read_text()
    paths = {"fairseq .pt": (fairseq_pt(m, tmp_path / "checkpoint.pt"), {"tokenizer": tmp_path / "tok"}),
             "HF-port folder": (export_hf(m.model, m.model.cfg, tmp_path / "hf", tokenizer_json=tokenizer_json), {})}
    for kind, (path, kwargs) in paths.items():
        loaded = ofa.from_pretrained(path, device="cpu", image_size=32, **kwargs)
        assert loaded.model.cfg == m.model.cfg, kind
        logits, captions = outputs(loaded, images)
        assert torch.equal(logits, want_logits), kind
        assert captions == want_captions, kind


def test_save_pretrained_round_trip_is_bit_identical(model, images, tmp_path) -> None:
    again = OFA.from_pretrained(model.save_pretrained(tmp_path / "copy"), device="cpu")
    want, got = model.model.state_dict(), again.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert again.task_settings == model.task_settings
    assert again.tokenizer.save(tmp_path / "a.json").read_text() == model.tokenizer.save(tmp_path / "b.json").read_text()
    assert torch.equal(outputs(again, images)[0], outputs(model, images)[0])
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["model.safetensors", "ofa_config.json",
                                                                      "tasks.json", "tokenizer.json"]


def test_high_level_calls_answer_in_the_world_form(trained_nano, model, images) -> None:
    captions = model.caption(images)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert all(any(w in c.split() for w in COLOURS) and any(s in c for s in SHAPES) for c in captions), captions
    assert isinstance(model.caption(images[0]), str)  # one image in, one answer out

    answers = model.vqa(images, "what shape is the largest object?")
    assert all(a in trained_nano.settings["vqa"]["answers"] for a in answers), answers
    assert model.vqa(images[:2], ["what colour is it?"] * 2, answers=["red", "blue"]) in (
        [a, b] for a in ("red", "blue") for b in ("red", "blue"))

    labels = trained_nano.settings["image_classify"]["classes"]
    assert all(c in labels for c in model.classify(images))
    assert model.classify(images[0], labels=["red circle", "blue square"]) in ("red circle", "blue square")
    with pytest.raises(ValueError, match="classify needs labels="):
        OFA(model.model, model.tokenizer, {}, device="cpu").classify(images[0])

    assert isinstance(model.generate(images[0], "what does the image describe?"), str)
    assert len(model.generate(None, ["what is red?", "what is blue?"], beam_size=1, max_len_b=4)) == 2


def test_trained_model_reads_the_colour_of_held_out_images(model) -> None:
    """Sensible answers, not just their form: `classify` names the large object's colour for twice as many of 48
    images it never saw as chance (8 of each colour: guessing, or one answer for all, gets 8)."""
    held_out = balanced_by_colour(8)
    colours = [record["label"].split()[0] for record, _ in held_out]
    predicted = [label.split()[0] for label in model.classify([image for _, image in held_out])]
    hits = sum(p == c for p, c in zip(predicted, colours))
    assert hits >= 16, f"colour right for {hits}/48 held-out images, chance is 8/48; predicted {Counter(predicted)}"


def test_boxes_are_in_the_input_image_pixels(model, images) -> None:
    wide = images[0].resize((160, 40))  # another size and aspect than the 32x32 the model sees
    boxes = model.ground([images[0], wide], "the circle")
    assert [len(b) for b in boxes] == [4, 4]
    for box, (w, h) in zip(boxes, [(64, 64), (160, 40)]):
        x0, y0, x1, y1 = box
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h, box
    small, big = model.ground(images[0], "the circle"), boxes[1]
    assert big == pytest.approx([small[0] * 2.5, small[1] * 40 / 64, small[2] * 2.5, small[3] * 40 / 64])


def test_decoding_settings_override_per_call(model, images) -> None:
    short = model.caption(images, beam_size=1, max_len_b=2)
    assert all(len(c.split()) <= 2 for c in short)
    with pytest.raises(TypeError, match="unknown decoding setting"):
        model.caption(images, beam=3)
    with pytest.raises(ValueError, match="2 images but 3 questions"):
        model.vqa(images[:2], ["a?", "b?", "c?"])


def test_open_vqa_without_candidates(trained_nano, images) -> None:
    settings = {k: v for k, v in trained_nano.settings.items() if k != "vqa"}
    m = OFA(ofa.from_pretrained(trained_nano.folder, device="cpu").model,
            ofa.from_pretrained(trained_nano.folder).tokenizer, {**settings, "vqa": {"image_size": 32}}, device="cpu")
    answers = m.vqa(images[:2], "what colour is the circle?", beam_size=2, max_len_b=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_text_to_image_gives_an_image_per_prompt(model, tiny_vqgan_dir) -> None:
    got = model.text_to_image(["a red circle", "a blue square"], vqgan=tiny_vqgan_dir, samples=2, return_all=True,
                              code_image_size=64)  # 8x8 codes
    side = 64
    assert [len(row) for row in got] == [2, 2] and all(im.size == (side, side) for row in got for im in row)
    with pytest.raises(ValueError, match="vqgan=DIR"):
        model.text_to_image("a red circle")


def test_a_run_checkpoint_takes_its_task_settings_from_the_run_config(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "answers.json").write_text(json.dumps(["yes", "no"]))
    run = tmp_path / "outputs" / "run" / "2026-01-01"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "data: {root: data}\ntask:\n  name: mixture\n  image_size: 64\n  tasks:\n"
        "    vqa: {name: vqa, monitor: score, image_size: '${task.image_size}', answers_file: '${data.root}/answers.json'}\n"
        "    grounding: {name: grounding, image_size: 48, max_image_size: '${.image_size}'}\n"
        "    caption: {name: caption, prompt: '${hydra:runtime.choices.model}', max_tgt_length: 7}\n")
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra: {{runtime: {{cwd: {tmp_path}}}}}\n")
    assert settings_of_run(run / ".hydra" / "config.yaml") == {
        "vqa": {"image_size": 64, "answers": ["yes", "no"]}, "grounding": {"image_size": 48, "max_image_size": 48},
        "caption": {"max_tgt_length": 7}}  # a value of the training process (hydra:) is left to the default


def test_bad_paths_are_named(tmp_path, trained_nano) -> None:
    with pytest.raises(CheckpointError, match="nowhere.ckpt: no such file"):
        ofa.from_pretrained(tmp_path / "nowhere.ckpt")
    m = ofa.from_pretrained(trained_nano.folder)
    with pytest.raises(CheckpointError, match="carries no vocabulary; pass tokenizer="):
        ofa.from_pretrained(fairseq_pt(m, tmp_path / "c.pt"))


def test_ground_orders_the_decoded_corners() -> None:
    """A box decoded with its second corner left of / above the first comes back as the box the corners span."""
    from ofa.api.pipeline import ordered_corners

    boxes = torch.tensor([[50.9, 41.0, 41.0, 62.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    assert ordered_corners(boxes).tolist() == [[41.0, 41.0, 50.9, 62.0], [1.0, 2.0, 3.0, 4.0]]
