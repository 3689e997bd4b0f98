"""Image infilling (`ofa.tasks.image_infill`): OFA's centre mask (rows/cols 64..191 of 256 at 0 after
normalisation), the centre's codes as the target, conf weighting, the code grid against the model, and
greedy code-only decoding scored by code accuracy."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from ofa.datamodules.collate import collate
from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.tasks.image_infill import ImageInfillConfig, ImageInfillTask, mask_center

TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64)


def raw(i: int = 0, size: int = 64) -> dict:
    image = Image.new("RGB", (size, size), (200, 30, 30))
    return {"id": f"m{i}", "image": image, "center_codes": [(3 * i + j) % 40 for j in range(16)]}


def test_mask_is_ofas_central_half() -> None:
    image = torch.ones(3, 256, 256)
    masked = mask_center(image)
    assert masked[:, 64:192, 64:192].abs().sum() == 0  # OFA: [64:192, 64:192] set to 0
    assert bool(masked[:, :64].eq(1).all()) and bool(masked[:, 192:].eq(1).all())
    assert bool(masked[:, :, :64].eq(1).all()) and bool(masked[:, :, 192:].eq(1).all())
    assert bool(image.eq(1).all())  # a copy


def test_sample_layout(tokenizer) -> None:
    task = ImageInfillTask(tokenizer, ImageInfillConfig(image_size=64, conf=2.0))
    s = task.preprocess(raw(), "train")
    assert s.target.tolist() == [c + tokenizer.code_offset for c in raw()["center_codes"]] + [tokenizer.eos]
    assert s.code_mask and s.patch_mask and s.conf == 2.0
    assert s.patch_image[:, 16:48, 16:48].abs().sum() == 0 and s.patch_image[:, :16].abs().sum() > 0
    assert s.source.tolist() == [tokenizer.bos, *tokenizer.encode(" what is the image in the middle part?"),
                                 tokenizer.eos]
    assert task.preprocess({**raw(), "center_codes": [1] * 15}, "train") is None  # not 4x4
    assert task.preprocess({**raw(), "image": None}, "train") is None


def test_code_grid_is_half_the_image(tokenizer) -> None:
    task = ImageInfillTask(tokenizer, ImageInfillConfig(image_size=64))
    with pytest.raises(RunConfigError, match="model.code_image_size=32"):
        task.check(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=64), tokenizer)
    task.check(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32), tokenizer)


def test_evaluation_decodes_codes_only_and_scores_them(tokenizer) -> None:
    torch.manual_seed(0)
    task = ImageInfillTask(tokenizer, ImageInfillConfig(image_size=64))
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32, **TINY)).eval()
    batch = collate([task.preprocess(raw(i), "val") for i in range(3)], tokenizer.pad)
    metrics = task.build_metrics()
    rows = task.evaluate(model, batch, metrics)
    hyps = task.generator(model).generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"],
                                          code_masks=batch["code_masks"])
    for (h,) in hyps:
        assert h.tokens.numel() == 17 and bool((h.tokens[:-1] >= tokenizer.code_offset).all())
    truth = batch["target"][:, :16] - tokenizer.code_offset
    got = torch.stack([h[0].tokens[:-1] - tokenizer.code_offset for h in hyps])
    assert metrics["code_acc"].compute().item() == pytest.approx(got.eq(truth).float().mean().item())
    assert len(rows) == 3
