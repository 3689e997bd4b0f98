"""ofa.checkpoint: fairseq / HF-port / platform round trips, strict loading (safe unpickling: test_safe_load.py)."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch
from omegaconf import OmegaConf, flag_override

from ofa import checkpoint as ck
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.modules.position import decoder_image_position_idx, image_bucket_table, token_bucket_table, token_buckets

FS_ARGS = dict(arch="ofa_tiny", encoder_embed_dim=32, decoder_embed_dim=32, encoder_layers=2, decoder_layers=1,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_embed_dim=64,
               decoder_ffn_embed_dim=64, resnet_type="resnet18", code_image_size=32, dropout=0.1,
               attention_dropout=0.0, activation_fn="gelu", scale_attn=True, scale_fc=True, scale_heads=True,
               scale_resids=False, disable_entangle=True, encoder_normalize_before=True,
               decoder_normalize_before=True, share_all_embeddings=True, max_source_positions=64,
               max_target_positions=64, token_bucket_size=32, image_bucket_size=6)


def fs_config() -> OFAConfig:
    return OFAConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
                     code_image_size=32, dropout=0.1, max_source_positions=64, max_target_positions=64,
                     token_bucket_size=32, image_bucket_size=6)


def fairseq_state(model: OFAModel) -> dict[str, torch.Tensor]:
    """What fairseq stores: every key, `*.version`, and the derived buffers as full tables."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    pos = torch.arange(64)
    for side in ("encoder", "decoder"):
        sd[f"{side}.version"] = torch.tensor([3.0])
        sd[f"{side}.token_rp_bucket"] = token_buckets(token_bucket_table(32, 64), pos, pos)
        sd[f"{side}.image_rp_bucket"] = image_bucket_table(6)
    sd["decoder.image_position_idx"] = decoder_image_position_idx(32, 6)
    return sd


@pytest.fixture(scope="module")
def fairseq_pt(tmp_path_factory) -> tuple[pathlib.Path, dict, dict]:
    """A fabricated official-style `.pt`: DictConfig `cfg` (holding a Namespace), `args`, and EMA."""
    torch.manual_seed(0)
    model, ema_model = OFAModel(fs_config()), OFAModel(fs_config())
    sd, ema = fairseq_state(model), fairseq_state(ema_model)
    cfg = OmegaConf.create({"common": {"fp16": True, "seed": 7}, "task": {"_name": "caption", "data": "a,b"},
                            "optimization": {"lr": [1e-5], "max_epoch": 2}})
    with flag_override(cfg, "allow_objects", True):
        cfg.model = argparse.Namespace(**FS_ARGS)
    state = {"cfg": cfg, "args": argparse.Namespace(**FS_ARGS), "model": sd,
             "extra_state": {"ema": ema, "train_iterator": {"epoch": 2}}, "optimizer_history": []}
    path = tmp_path_factory.mktemp("fs") / "checkpoint_best.pt"
    torch.save(state, path)
    return path, sd, ema


def same_weights(a: dict, b: dict) -> None:
    keys = {k for k in a if not ck.DERIVED.search(k)}
    assert keys == {k for k in b if not ck.DERIVED.search(k)}
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def test_fairseq_import_and_exports_round_trip(fairseq_pt, tmp_path):
    path, sd, _ = fairseq_pt
    ckpt = ck.read_checkpoint(path)
    assert ckpt.config == fs_config()
    model = OFAModel(ckpt.config)
    report = ck.load_state_dict(model, ckpt.state_dict)
    assert report.missing == [] and report.unexpected == []
    same_weights(model.state_dict(), sd)
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight

    hf_dir = ck.export_hf(model, ckpt.config, tmp_path / "hf")
    assert "decoder.layers.0.cross_attn.q_proj.weight" in torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    back = ck.read_checkpoint(hf_dir)
    assert back.config == OFAConfig.from_dict({**fs_config().to_dict()})
    same_weights(back.state_dict, sd)

    plat = ck.save_platform(model, ckpt.config, tmp_path / "platform")
    again = ck.read_checkpoint(plat)
    assert again.config == ckpt.config
    loaded = OFAModel(again.config)
    ck.load_state_dict(loaded, again.state_dict)
    same_weights(loaded.state_dict(), sd)


def test_ema_weights(fairseq_pt):
    path, sd, ema = fairseq_pt
    model = ck.load_model(path, ema=True)
    same_weights(model.state_dict(), ema)
    assert not torch.equal(model.encoder.image_proj.weight, sd["encoder.image_proj.weight"])


def test_cli_convert_both_formats(fairseq_pt, tmp_path):
    path, sd, ema = fairseq_pt
    assert ck.main(["convert", str(path), str(tmp_path / "hf"), "--format", "hf", "--ema"]) == 0
    assert ck.main(["convert", str(tmp_path / "hf"), str(tmp_path / "plat")]) == 0
    expected = {k: v for k, v in ema.items() if k not in ck.TIED_KEYS[1:]}  # platform stores the tie once
    same_weights(ck.read_checkpoint(tmp_path / "plat").state_dict, expected)


def test_missing_keys_raise_unless_not_strict(fairseq_pt):
    _, sd, _ = fairseq_pt
    partial = {k: v for k, v in sd.items() if "layers.0.fc1" not in k}
    model = OFAModel(fs_config())
    with pytest.raises(ck.CheckpointError, match="missing keys.*layers.0.fc1"):
        ck.load_state_dict(model, partial)
    report = ck.load_state_dict(model, partial, strict=False)
    assert "encoder.layers.0.fc1.weight" in report.missing


def test_vocab_resize_only_when_asked(fairseq_pt):
    _, sd, _ = fairseq_pt
    model = OFAModel(OFAConfig.from_dict({**fs_config().to_dict(), "vocab_size": 60}))
    with pytest.raises(ck.CheckpointError, match="vocabulary size differs"):
        ck.load_state_dict(model, sd)
    report = ck.load_state_dict(model, sd, resize_embeddings=True)
    assert report.resized_vocab == (50, 60)
    assert torch.equal(model.encoder.embed_tokens.weight[:50], sd["encoder.embed_tokens.weight"])


def test_untied_embeddings_and_unsupported_flags_are_refused(fairseq_pt):
    _, sd, _ = fairseq_pt
    untied = dict(sd, **{"decoder.output_projection.weight": torch.randn(50, 32)})
    with pytest.raises(ck.CheckpointError, match="not tied"):
        ck.load_state_dict(OFAModel(fs_config()), untied)
    with pytest.raises(ck.CheckpointError, match="scale-resids"):
        ck.config_from_fairseq(dict(FS_ARGS, scale_resids=True), sd)


def test_key_renames_are_inverse():
    keys = ["encoder.layers.3.attn_ln.weight", "decoder.layers.0.self_attn_ln.bias",
            "decoder.layers.1.encoder_attn.k_proj.weight", "decoder.layers.1.encoder_attn_layer_norm.weight",
            "decoder.layers.1.cross_attn_ln.bias", "encoder.layers.0.ffn_layernorm.weight",
            "decoder.layers.0.self_attn.c_attn", "encoder.embed_images.layer1.0.bn1.weight"]
    for key in keys:
        assert ck.hf_to_fairseq_key(ck.fairseq_to_hf_key(key)) == key
    assert ck.fairseq_to_hf_key(keys[2]) == "decoder.layers.1.cross_attn.k_proj.weight"


def lightning_state(model: OFAModel, record: dict | None) -> dict:
    """What a platform run's `.ckpt` holds, in the parts `ofa.checkpoint` reads."""
    state = {"pytorch-lightning_version": "2.0", "global_step": 2,
             "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
             "ema": {"encoder.image_proj.weight": torch.zeros_like(model.encoder.image_proj.weight)}}
    return {**state, "ofa": record} if record is not None else state


def test_lightning_checkpoint_reads_with_its_record_and_ema(tmp_path):
    torch.manual_seed(0)
    model = OFAModel(fs_config())
    tok = {"kind": "trained", "path": "/x/tokenizer.json", "sha256": ck.text_sha256("{}"), "json": "{}"}
    torch.save(lightning_state(model, {"version": 1, "model_config": fs_config().to_dict(), "tokenizer": tok}),
               tmp_path / "last.ckpt")
    ckpt = ck.read_checkpoint(tmp_path / "last.ckpt")
    assert ckpt.config == fs_config() and ckpt.meta == {"format": "lightning", "ema": False, "tokenizer": tok}
    same_weights(ckpt.state_dict, model.state_dict())
    assert ck.read_checkpoint(tmp_path / "last.ckpt", ema=True).state_dict["encoder.image_proj.weight"].eq(0).all()
    ck.convert(tmp_path / "last.ckpt", tmp_path / "plat")
    assert (tmp_path / "plat" / ck.TOKENIZER_FILE).read_text() == "{}"
    assert ck.read_checkpoint(tmp_path / "plat").meta["tokenizer"]["sha256"] == tok["sha256"]


def test_lightning_checkpoint_without_record_says_so(tmp_path):
    torch.save(lightning_state(OFAModel(fs_config()), None), tmp_path / "old.ckpt")
    with pytest.raises(ck.CheckpointError, match="without the model config.*ckpt_path="):
        ck.read_checkpoint(tmp_path / "old.ckpt")


def test_other_size_is_named_on_one_line():
    held = ck.Checkpoint({}, OFAConfig.from_preset("ofa_nano"), "nano.ckpt")
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_same_size(held, OFAConfig.from_preset("ofa_tiny"))
    assert str(err.value) == ("nano.ckpt holds d_model=128, 2+2 layers (ofa_nano); this run builds ofa_tiny "
                              "(d_model=256, 4+4 layers); run with model=ofa_nano")
    ck.check_same_size(held, OFAConfig.from_preset("ofa_nano", vocab_size=99, dropout=0.1))  # not size fields


def test_failed_export_leaves_no_folder_and_keeps_the_previous_one(fairseq_pt, tmp_path, monkeypatch):
    path, _, _ = fairseq_pt
    out = tmp_path / "out" / "hf"
    ck.convert(path, out, "hf")
    before = sorted(p.name for p in out.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)  # fails after the staging folder was made
    for target in (out, tmp_path / "out" / "new"):
        with pytest.raises(OSError, match="No space"):
            ck.convert(path, target, "hf")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hf"]  # no staging folder, no "new"
    assert sorted(p.name for p in out.iterdir()) == before
