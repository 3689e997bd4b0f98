"""Parameter-efficient tuning (ofa/tuning.py, spec §8): deep prompts, adapters and BitFit freeze the rest,
frozen parameters stay bit-identical through training steps, a zero-length prompt is the plain model, and a
tuned checkpoint keeps only the tuned weights yet reloads (merged onto its base) to identical outputs."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from ofa.checkpoint import load_model, read_checkpoint, save_platform
from ofa.lit_module import EMAConfig, ModuleConfig, OFALitModule, load_pretrained
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.modules.model import OFAModel
from ofa.tuning import TuningConfig, freeze_for_tuning, is_tuned, parameter_report, tuned_config
from ofa.utils.optim import OptimConfig, ScheduleConfig, build_optimizer


class Tiny:
    """d_model 32, 2+2 layers, 4 heads, one ResNet block per stage: 32x32 images give 2x2 patches."""

    def config(self, **overrides) -> OFAConfig:
        return OFAConfig.from_dict(dict(
            vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
            resnet_layers=[1, 1, 1], code_image_size=32, **overrides))

    def batch(self, b: int = 2) -> dict:
        g = torch.Generator().manual_seed(1)
        src, tgt = torch.randint(4, 120, (b, 9), generator=g), torch.randint(4, 120, (b, 7), generator=g)
        src[:, 0], tgt[:, 0], src[0, 6:] = 0, 0, 1  # <s>, sample 0's source padded
        return {"src_tokens": src, "prev_output_tokens": tgt, "patch_images": torch.randn(b, 3, 32, 32, generator=g),
                "patch_masks": torch.tensor([True, False][:b])}


TINY = Tiny()
MODES = ("prompt", "adapter", "bitfit")


def tuning(mode: str, **kw) -> TuningConfig:
    return TuningConfig(mode=mode, prompt_length=kw.pop("prompt_length", 3), adapter_dim=4, **kw)


def logits(model: OFAModel, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    """A pretrained (here: random, seeded) plain model saved as a platform directory."""
    torch.manual_seed(0)
    cfg = TINY.config()
    return str(save_platform(OFAModel(cfg), cfg, tmp_path_factory.mktemp("base") / "base"))


def tuned_model(base_dir: str, mode: str, freeze: bool = True, **kw) -> OFAModel:
    cfg = tuned_config(TINY.config(), tuning(mode, **kw))
    torch.manual_seed(1)
    model = OFAModel(cfg)
    load_pretrained(model, base_dir)
    if freeze:
        freeze_for_tuning(model, mode)
    return model


def test_zero_length_prompt_is_the_plain_model(base_dir) -> None:
    batch = TINY.batch(b=2)
    plain = load_model(base_dir)
    prompted = tuned_model(base_dir, "prompt", freeze=False, prompt_length=0)  # nothing left to train
    assert torch.equal(logits(prompted, batch), logits(plain, batch))
    with_prompt = tuned_model(base_dir, "prompt", prompt_length=3)
    assert not torch.allclose(logits(with_prompt, batch), logits(plain, batch))


@pytest.mark.parametrize("mode", MODES)
def test_only_the_tuned_parameters_train(base_dir, mode) -> None:
    """Three AdamW steps (weight decay on): every frozen parameter bit-identical, every tuned one moved."""
    model = tuned_model(base_dir, mode).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.01))
    batch = TINY.batch(b=2)
    for _ in range(3):
        out = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])
        out.logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    tuned = [n for n, _ in model.named_parameters() if is_tuned(n, mode)]
    assert tuned and all(p.requires_grad == is_tuned(n, mode) for n, p in model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != is_tuned(name, mode), name
    if mode == "prompt":
        assert {n.split(".")[1] for n in tuned} == {"encoder_prompt_encoder", "decoder_prompt_encoder"}
    if mode == "bitfit":
        assert "encoder.layers.0.fc1.bias" in tuned and "encoder.layers.0.fc1.weight" not in tuned


def test_prompt_encoder_shapes_and_projection() -> None:
    cfg = tuned_config(TINY.config(), tuning("prompt", prompt_projection=True, prompt_dim=16))
    model = OFAModel(cfg)
    enc = model.encoder.encoder_prompt_encoder
    assert enc.embedding.weight.shape == (3, 32) and enc.trans[2].weight.shape == (2 * 2 * 32, 16)
    pairs = enc.train()(rows=5)
    assert len(pairs) == 2 and pairs[0][0].shape == (5, 4, 3, 8)
    plain = OFAModel(tuned_config(TINY.config(), tuning("prompt")))
    assert plain.decoder.decoder_prompt_encoder.embedding.weight.shape == (3, 2 * 2 * 32)


def test_incremental_decoding_with_prompts_and_adapters_equals_full(base_dir) -> None:
    cfg = tuned_config(TINY.config(adapter_dim=4), tuning("prompt"))
    torch.manual_seed(2)
    model = OFAModel(cfg).eval()
    batch = TINY.batch(b=2)
    with torch.no_grad():
        enc = model.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
        full = model.decode(batch["prev_output_tokens"], enc)
        cache = model.new_cache()
        steps = [model.decode(batch["prev_output_tokens"][:, :t], enc, cache=cache) for t in range(1, 5)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :4], atol=1e-5, rtol=1e-4)
    gen = SequenceGenerator(model, GenerationConfig(beam_size=3, max_len_b=5), pad=1, bos=0, eos=2)
    hyps = gen.generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])  # beams share prompts
    for i, sample in enumerate(hyps):
        best = sample[0]
        prev = torch.cat([torch.tensor([0]), best.tokens[:-1]])[None]
        with torch.no_grad():  # the beam's scores are the teacher-forced log-probs of its tokens
            enc1 = model.encode(batch["src_tokens"][i:i + 1], batch["patch_images"][i:i + 1], batch["patch_masks"][i:i + 1])
            lp = model.decode(prev, enc1).log_softmax(-1)[0].gather(-1, best.tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(lp, best.positional_scores, atol=1e-4, rtol=1e-4)


def test_parameter_report_counts_the_tied_embedding_once(base_dir) -> None:
    model = tuned_model(base_dir, "bitfit")
    total = sum(p.numel() for p in model.parameters())
    line = parameter_report(model, "bitfit")
    assert line.startswith("tuning=bitfit: ") and f"of {total:,} parameters" in line


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(Exception, match="module.tuning.mode='lora'"):
        TuningConfig(mode="lora")


# ------------------------------------------------------------------------------------------- checkpoints
def lit_module(base: str | None, mode: str, ema: float = 0.0) -> OFALitModule:
    module = ModuleConfig(tuning=tuning(mode), ema=EMAConfig(decay=ema))
    lit = OFALitModule(TINY.config(), {}, OptimConfig(), ScheduleConfig(), module, init_from=base)
    lit.configure_model()
    return lit


def saved(lit: OFALitModule, path) -> dict:
    """What Lightning writes: the module's state dict, then the module's on_save_checkpoint."""
    ckpt = {"state_dict": lit.state_dict(), "pytorch-lightning_version": pl.__version__}
    lit.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return ckpt


@pytest.mark.parametrize("mode", MODES)
def test_tuned_checkpoint_holds_only_tuned_weights_and_reloads(base_dir, tmp_path, mode) -> None:
    lit = lit_module(base_dir, mode)
    with torch.no_grad():  # stand-in for training: move every tuned parameter
        for p in lit.model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    ckpt = saved(lit, tmp_path / "tuned.ckpt")
    tuned = {"model." + n for n, p in lit.model.named_parameters() if p.requires_grad}
    buffers = {"model." + n for n, _ in lit.model.named_buffers()}
    assert tuned <= set(ckpt["state_dict"]) <= tuned | buffers
    assert ckpt["tuning"]["mode"] == mode and ckpt["tuning"]["base"].endswith("base")
    batch = TINY.batch(b=2)
    want = logits(lit.model, batch)
    assert torch.equal(logits(load_model(tmp_path / "tuned.ckpt"), batch), want)  # read_checkpoint merges
    resumed = lit_module(None, mode)  # ckpt_path= resume: base from the record, then the tuned weights
    resumed.on_load_checkpoint(ckpt)
    resumed.load_state_dict(ckpt["state_dict"], strict=resumed.strict_loading)
    assert torch.equal(logits(resumed.model, batch), want)


def test_full_mode_saves_everything(base_dir, tmp_path) -> None:
    lit = lit_module(base_dir, "full")
    ckpt = saved(lit, tmp_path / "full.ckpt")
    assert "tuning" not in ckpt and set(ckpt["state_dict"]) == set(lit.state_dict())


def test_ema_follows_the_tuned_parameters_only(base_dir, tmp_path) -> None:
    """EMA shadows exactly the tuned parameters, its averaged weights reach evaluation, and the tuned
    checkpoint's `--ema` weights merge onto the base."""
    lit = lit_module(base_dir, "prompt", ema=0.5)
    assert set(lit.ema.shadow) == {n for n, p in lit.model.named_parameters() if p.requires_grad}
    name = "encoder.encoder_prompt_encoder.embedding.weight"
    param = dict(lit.model.named_parameters())[name]
    start = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    lit.ema.update(lit.model, step=1)
    torch.testing.assert_close(lit.ema.shadow[name], start + 0.5)
    ckpt = saved(lit, tmp_path / "ema.ckpt")
    merged = read_checkpoint(tmp_path / "ema.ckpt", ema=True).state_dict
    torch.testing.assert_close(merged[name], start + 0.5)
    assert torch.equal(merged["encoder.layers.0.fc1.weight"], lit.model.encoder.layers[0].fc1.weight)
    assert set(ckpt["ema"]) == set(lit.ema.shadow)


def test_a_missing_base_is_named(base_dir, tmp_path) -> None:
    lit = lit_module(base_dir, "bitfit")
    ckpt = saved(lit, tmp_path / "t.ckpt")
    ckpt["tuning"]["base"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "t.ckpt")
    with pytest.raises(Exception, match="base checkpoint .*gone is missing"):
        read_checkpoint(tmp_path / "t.ckpt")


def test_base_config_is_the_model_config() -> None:
    assert OFAConfig().encoder_prompt_length == 0 and OFAConfig().adapter_dim == 0


# --------------------------------------------------------------------------- image positions (larger images)
def test_a_checkpoint_of_a_smaller_bucket_loads_with_every_cell_and_offset_kept(base_dir) -> None:
    """Bucket 42 -> 48: cell (r, c) keeps its row under the new id, every 2-D offset keeps its table row."""
    small = load_model(base_dir)  # tiny config: image_bucket_size 42
    big = OFAModel(TINY.config(image_bucket_size=48))
    load_pretrained(big, base_dir)
    old, new = small.encoder.embed_image_positions.weight, big.encoder.embed_image_positions.weight
    assert new.shape[0] == 48 * 48 + 1
    assert torch.equal(new[0], old[0]) and torch.equal(new[3 * 48 + 5 + 1], old[3 * 42 + 5 + 1])
    told = small.decoder.image_rel_pos_table_list[1].weight
    tnew = big.decoder.image_rel_pos_table_list[1].weight
    for dr, dc in [(0, 0), (-41, 41), (7, -3)]:
        assert torch.equal(tnew[(dr + 47) * 95 + dc + 47], told[(dr + 41) * 83 + dc + 41])
    assert torch.equal(tnew[-3:], told[-3:])
    batch = TINY.batch(b=2)  # 2x2 patch grid: every cell and offset it uses was kept
    torch.testing.assert_close(logits(big, batch), logits(small, batch))


def test_interpolated_positions_for_a_larger_grid() -> None:
    """interpolate_position: a 4x4 grid beyond the 2x2 pretraining grid (orig 32 px) takes the bilinear resize
    of the 2x2 grid's embeddings; a grid within it is unchanged."""
    torch.manual_seed(0)
    model = OFAModel(TINY.config(interpolate_position=True, orig_patch_image_size=32)).eval()
    enc = model.encoder
    grid = enc.embed_image_positions.weight[torch.tensor([1, 2, 43, 44])].T.reshape(1, -1, 2, 2)
    want = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear").flatten(2).transpose(1, 2)
    raw = enc.embed_image_positions(torch.zeros(1, 16, dtype=torch.long))
    torch.testing.assert_close(enc._interpolated_positions(4, 4, raw), want)
    assert enc._interpolated_positions(2, 2, raw[:, :4]) is not None
    assert torch.equal(enc._interpolated_positions(2, 2, raw[:, :4]), raw[:, :4])
    with torch.no_grad():  # end to end: a 64 px image runs with the interpolated positions
        out = model(torch.tensor([[0, 5, 2]]), torch.tensor([[0, 7]]), torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2, 120)
