"""Text-to-image (`ofa.tasks.image_gen`): OFA's sample layout with the official BPE, bad codes skipped, the
code-only constraint in the loss and in sampling (never a non-code token, exactly the grid's codes), seeded
samples, the code grid checked against the model, and the 1024-codes-past-max_target_positions layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa.errors import RunConfigError
from ofa.lit_module import OFALitModule
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.datamodules.collate import collate
from ofa.tasks.image_gen import ImageGenConfig, ImageGenTask
from ofa.tasks.image_codes import code_range
from ofa.tokenizer import build_tokenizer
from ofa.utils.optim import OptimConfig, ScheduleConfig

OFA_BPE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ofa_bpe"
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64)


def make_task(tokenizer, code_image_size: int = 32, **kwargs) -> ImageGenTask:
    cfg = ImageGenConfig(code_image_size=code_image_size, vqgan=None, **kwargs)
    cfg.generation.beam_size, cfg.generation.sampling_topk = 3, 50
    return ImageGenTask(tokenizer, cfg)


def raw(i: int = 0, n: int = 16) -> dict:
    return {"id": f"g{i}", "captions": ["A Large red circle at the top left"], "codes": [(7 * i + j) % 50 for j in range(n)]}


@pytest.mark.skipif(not OFA_BPE.is_dir(), reason="needs ../shared/fixtures/ofa_bpe")
def test_ofa_layout_with_the_official_vocabulary() -> None:
    bpe = build_tokenizer("ofa", OFA_BPE)
    task = ImageGenTask(bpe, ImageGenConfig())  # 256 px: 1024 codes
    codes = [(31 * j) % 8192 for j in range(1024)]
    caption = " ".join(f"Word{i}" for i in range(70))
    s = task.preprocess({"id": "x", "captions": [caption], "codes": codes}, "train")
    kept = " ".join(caption.split()[:64])  # 64 words, case kept (OFA neither lower-cases nor strips)
    assert s.source.tolist() == [0, *bpe.encode(f" what is the complete image? caption: {kept}"), 2]
    assert s.target.tolist() == [c + 50265 for c in codes] + [2]
    assert s.prev_output_tokens.tolist() == [0] + [c + 50265 for c in codes]
    assert s.code_mask and not s.patch_mask and s.constraint_mask is None
    assert task.constraint_range() == (50265, 58457)  # OFA's --constraint-range


def test_bad_codes_are_skipped(tokenizer) -> None:
    task = make_task(tokenizer)
    assert task.preprocess(raw(), "train") is not None
    assert task.preprocess(raw(n=15), "train") is None  # not the 4x4 grid
    assert task.preprocess({**raw(), "codes": [tokenizer.num_codes] * 16}, "train") is None
    assert task.preprocess({**raw(), "codes": "1 2 x"}, "train") is None
    assert task.preprocess({"id": "n", "codes": raw()["codes"]}, "train") is None  # no caption


def test_loss_only_counts_the_code_tokens(tokenizer) -> None:
    """Text logits cannot take probability from the codes: raising them leaves the loss unchanged."""
    task = make_task(tokenizer)
    module = OFALitModule(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32, **TINY),
                          {"image_gen": task}, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=1))
    module.configure_model()
    batch = collate([task.preprocess(raw(i), "train") for i in range(3)], tokenizer.pad)
    with torch.no_grad():
        logits = module(batch)
        base = module.task_losses(batch, logits)["image_gen"].loss
        pushed = logits.clone()
        pushed[..., 4:tokenizer.code_offset] += 50.0  # text ids
        assert module.task_losses(batch, pushed)["image_gen"].loss.item() == pytest.approx(base.item(), rel=1e-6)
        pushed[..., tokenizer.code_offset + 3] += 50.0  # one code id: now it matters
        assert module.task_losses(batch, pushed)["image_gen"].loss.item() > base.item() + 1.0


def test_sampling_writes_exactly_the_grid_of_codes(tokenizer) -> None:
    torch.manual_seed(0)
    task = make_task(tokenizer)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32, **TINY)).eval()
    batch = collate([task.preprocess(raw(i), "val") for i in range(2)], tokenizer.pad)
    hyps = task.generator(model).generate(batch["src_tokens"], None, batch["patch_masks"],
                                          code_masks=batch["code_masks"])
    start, end = code_range(tokenizer)
    for sample in hyps:
        assert len(sample) == 3  # beam_size independent samples
        for h in sample:
            codes = h.tokens[:-1]
            assert h.tokens[-1].item() == tokenizer.eos and codes.numel() == 16
            assert bool(((codes >= start) & (codes < end)).all())  # never a non-code token
    codes = task.generate_codes(model, batch)
    assert codes.shape == (2, 3, 16) and bool((codes < tokenizer.num_codes).all())
    assert torch.equal(codes, task.generate_codes(model, batch))  # seeded
    assert len({tuple(c.tolist()) for c in codes[0]}) == 3  # the samples differ


def test_code_grid_must_match_the_model(tokenizer) -> None:
    task = make_task(tokenizer, code_image_size=64)
    with pytest.raises(RunConfigError, match=r"task.code_image_size=64 .* set model.code_image_size=64"):
        task.check(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=128), tokenizer)
    task.check(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=64), tokenizer)


def test_codes_beyond_max_target_positions_use_image_positions(tokenizer) -> None:
    """OFA's 1024 codes + </s> exceed max_target_positions=1024: the code rows use the 2-D image positions.
    The same layout at small scale: 16 codes with max_target_positions=16."""
    torch.manual_seed(0)
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32, max_target_positions=16,
                                **TINY)
    model = OFAModel(cfg).eval()
    task = make_task(tokenizer)
    batch = collate([task.preprocess(raw(i), "train") for i in range(2)], tokenizer.pad)
    with torch.no_grad():
        logits = model(batch["src_tokens"], batch["prev_output_tokens"], None, batch["patch_masks"],
                       batch["code_masks"])
    assert logits.shape[1] == 17 and bool(torch.isfinite(logits).all())
    assert task.generate_codes(model, batch).shape == (2, 3, 16)  # the cached decoder gets there too


def test_a_smaller_codebook_narrows_the_constraint(tokenizer, tiny_vqgan_dir) -> None:
    """A VQGAN with 32 codes: only <code_0..31> may be targets or generated (the rest cannot be decoded)."""
    task = ImageGenTask(tokenizer, ImageGenConfig(code_image_size=32, vqgan=str(tiny_vqgan_dir)))
    assert task.constraint_range() == (tokenizer.code_offset, tokenizer.code_offset + 32)
    assert task.generator(torch.nn.Linear(1, 1)).cfg.constraint_range == task.constraint_range()
