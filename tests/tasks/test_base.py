"""The task contract (`ofa.tasks.base`): one `Sample` maker, the text-only input path, one transform style,
and the start-up checks each task makes of itself."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from ofa.datamodules.collate import collate
from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.tasks import TASKS
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.grounding import GroundingConfig, GroundingTask


class FirstWordTask(Task):
    """A text-only task for these tests: ` what is the first word of " {text} "?` -> the first word."""

    name = "first_word"

    def preprocess(self, raw: dict, split: str) -> Sample | None:
        text = raw.get("text")
        if not text:
            return None
        source = self.encode_text(f' what is the first word of " {text} "?', bos=True, eos=True)
        return self.make_sample(raw, source, self.encode_text(" " + text.split()[0]), None)


class ImageTask(Task):
    name = "image_task"

    def preprocess(self, raw: dict, split: str) -> Sample | None:
        pixels, _ = self.transform(split)(raw["image"])
        return self.make_sample(raw, self.encode_text(" hi", bos=True, eos=True), self.encode_text(" a"), pixels,
                                conf=0.5)


def test_make_sample_layout_and_types(tokenizer) -> None:
    task = ImageTask(tokenizer, TaskConfig(image_size=16))
    s = task.preprocess({"id": 7, "image": Image.new("RGB", (20, 10), "red")}, "val")
    a = tokenizer.encode(" a")
    assert s.id == "7" and s.task == "image_task" and isinstance(s.conf, float) and s.conf == 0.5
    assert s.prev_output_tokens.tolist() == [tokenizer.bos, *a] and s.target.tolist() == [*a, tokenizer.eos]
    assert s.decoder_prompt.tolist() == [tokenizer.bos] and s.patch_mask is True
    assert s.patch_image.shape == (3, 16, 16) and s.constraint_mask is None and s.code_mask is False
    # a longer decoder prompt is forced and its target positions are ignored (pad)
    prompt = torch.tensor([tokenizer.bos, 50, 51])
    s = task.make_sample({"id": "x"}, s.source, torch.tensor(a), None, decoder_prompt=prompt)
    assert s.prev_output_tokens.tolist() == [tokenizer.bos, 50, 51, *a]
    assert s.target.tolist() == [tokenizer.pad, tokenizer.pad, *a, tokenizer.eos]


def test_text_only_sample_is_a_masked_zero_image(tokenizer) -> None:
    task = FirstWordTask(tokenizer, TaskConfig(image_size=32))
    s = task.preprocess({"id": "t1", "text": "red circles everywhere"}, "train")
    assert s.patch_mask is False and s.patch_image.shape == (3, 32, 32) and not s.patch_image.any()
    assert tokenizer.decode(s.target.tolist()) == " red"
    assert task.preprocess({"id": "t2"}, "train") is None  # no text: skipped


def test_text_only_batches_skip_the_image_and_mixed_batches_mask_it(tokenizer) -> None:
    """A text-only sample gives the same logits alone (no image at all) and next to an image sample (its
    zero image masked), as OFA's patch_masks=False promises."""
    text_task, image_task = FirstWordTask(tokenizer, TaskConfig(image_size=32)), ImageTask(tokenizer,
                                                                                           TaskConfig(image_size=32))
    text = text_task.preprocess({"id": "t", "text": "blue squares here"}, "val")
    image = image_task.preprocess({"id": "i", "image": Image.new("RGB", (32, 32), "green")}, "val")
    alone, mixed = collate([text], tokenizer.pad), collate([text, image], tokenizer.pad)
    assert alone["patch_images"] is None and alone["patch_masks"].tolist() == [False]
    assert mixed["patch_images"].shape == (2, 3, 32, 32) and mixed["patch_masks"].tolist() == [False, True]
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        out_alone = model(alone["src_tokens"], alone["prev_output_tokens"], None, alone["patch_masks"])
        out_mixed = model(mixed["src_tokens"], mixed["prev_output_tokens"], mixed["patch_images"],
                          mixed["patch_masks"])
    t = text.target.numel()
    assert torch.allclose(out_alone[0, :t], out_mixed[0, :t], atol=1e-4)


def test_transform_is_one_style_for_train_and_eval(tokenizer) -> None:
    task = ImageTask(tokenizer, TaskConfig(image_size=24, augment="flip"))
    image = Image.new("RGB", (40, 20))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    assert task.transform("val") is task.transform("test") and task.transform("val") is not task.transform("train")
    evals = [task.transform("val")(image)[0] for _ in range(8)]
    assert all(torch.equal(e, evals[0]) for e in evals)  # evaluation never augments
    torch.manual_seed(0)
    trains = [task.transform("train")(image)[0] for _ in range(16)]
    assert any(not torch.equal(t, evals[0]) for t in trains)  # the flip happens in training


def test_check_names_the_key(tokenizer) -> None:
    model_cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))
    limit = model_cfg.image_bucket_size * model_cfg.patch_stride
    ImageTask(tokenizer, TaskConfig(image_size=limit)).check(model_cfg, tokenizer)  # at the limit: fine
    with pytest.raises(RunConfigError, match=rf"task.tasks.x.image_size={limit + 1} .* at most {limit} pixels"):
        ImageTask(tokenizer, TaskConfig(image_size=limit + 1)).check(model_cfg, tokenizer, "task.tasks.x")
    long_tgt = TaskConfig(max_tgt_length=model_cfg.max_target_positions - 1)
    with pytest.raises(RunConfigError, match="task.max_tgt_length=.*exceeds model.max_target_positions"):
        ImageTask(tokenizer, long_tgt).check(model_cfg, tokenizer)


def test_grounding_checks_for_bin_tokens(tokenizer) -> None:
    model_cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))
    task = GroundingTask(tokenizer, GroundingConfig(image_size=64, max_image_size=64))
    task.check(model_cfg, tokenizer)
    no_bins = dataclasses.replace(model_cfg)  # any model; the tokenizer decides
    with pytest.raises(RunConfigError, match="grounding needs <bin_i> location tokens"):
        task.check(no_bins, type("Tok", (), {"num_bins": 0})())


def test_every_registered_task_uses_the_contract(tokenizer) -> None:
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name
        assert issubclass(cls.config_class, TaskConfig)
