"""ofa.vqgan_io: taming bundles load safely (Lightning names as placeholders, any other pickle global refused
unrun), mismatches fail on one line, and save -> load is bit-identical."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig
from ofa.safe_load import CheckpointError
from ofa.vqgan_io import LightningPlaceholder, load_vqgan, read_checkpoint, save_vqgan, taming_yaml

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "taming_gumbel"
TINY = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=8,
                   embed_dim=8, n_embed=16)


class Touch:
    """Unpickling this would create a file (an unknown class and its reduce)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


class System:
    """Unpickling this would run a shell command."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def bundle(tmp_path: Path, ckpt: dict) -> Path:
    """The fixture's model.yaml beside a checkpoint made by the test."""
    shutil.copy(FIXTURE / "model.yaml", tmp_path / "model.yaml")
    torch.save(ckpt, tmp_path / "last.ckpt")
    return tmp_path


def fixture_state() -> dict:
    return read_checkpoint(FIXTURE / "last.ckpt")["state_dict"]


def test_lightning_checkpoint_loads_with_placeholders():
    ckpt = read_checkpoint(FIXTURE / "last.ckpt")
    (callback, state), = ckpt["callbacks"].items()
    assert issubclass(callback, LightningPlaceholder) and callback.__name__ == "ModelCheckpoint"
    assert state["monitor"] == "val/rec_loss" and ckpt["global_step"] == 1234 and len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("loss.") for k in ckpt["state_dict"])
    model = load_vqgan(FIXTURE / "last.ckpt")  # the .ckpt file, model.yaml beside it
    assert not model.training and model.quantize.embed.weight.dtype == torch.float32


def test_taming_release_layout(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(FIXTURE / "model.yaml", tmp_path / "configs" / "model.yaml")
    shutil.copy(FIXTURE / "last.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    a, b = load_vqgan(tmp_path), load_vqgan(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(FileNotFoundError, match="no model.yaml"):
        load_vqgan(tmp_path / "configs")


def test_attribute_dict_hyper_parameters_load(tmp_path, monkeypatch):
    """Lightning's AttributeDict (saved hyper-parameters), pickled by name, comes back as a plain dict."""
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")
    parsing.AttributeDict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):  # never import the real package
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, parsing.__name__, parsing)
    torch.save({"state_dict": fixture_state(), "hyper_parameters": parsing.AttributeDict(lr=0.1)}, tmp_path / "h.ckpt")
    hparams = read_checkpoint(tmp_path / "h.ckpt")["hyper_parameters"]
    assert type(hparams) is dict and hparams == {"lr": 0.1}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload, culprit", [(System, "posix.system"), (Touch, "pathlib")])
def test_disallowed_global_is_refused_unrun(tmp_path, payload, culprit):
    target = tmp_path / "pwned"
    path = bundle(tmp_path, {"state_dict": fixture_state(), "callbacks": {"x": payload(target)}})
    with pytest.raises(CheckpointError) as err:
        load_vqgan(path)
    message = str(err.value)
    assert "\n" not in message and str(path / "last.ckpt") in message and culprit in message
    assert not target.exists()


def test_unknown_class_is_refused(tmp_path):
    path = tmp_path / "unknown.ckpt"
    torch.save({"state_dict": {}, "trainer": TINY}, path)  # a dataclass: harmless, but not on the list
    with pytest.raises(CheckpointError, match=r"unknown\.ckpt: refusing to unpickle .*VQGANConfig"):
        read_checkpoint(path)


def test_missing_unexpected_and_misshapen_keys_fail_on_one_line(tmp_path):
    state = fixture_state()
    del state["decoder.up.0.block.1.conv2.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys: decoder\.up\.0\.block\.1\.conv2\.weight$"):
        load_vqgan(bundle(tmp_path, {"state_dict": state}))
    state = {**fixture_state(), "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: encoder\.extra\.weight$"):
        load_vqgan(bundle(tmp_path, {"state_dict": state}))
    state = {**fixture_state(), "quantize.embed.weight": torch.zeros(65, 16)}
    with pytest.raises(CheckpointError, match=r"wrong shapes keys: quantize\.embed\.weight \(65, 16\) vs \(64, 16\)"):
        load_vqgan(bundle(tmp_path, {"state_dict": state}))
    state = {k: v for k, v in fixture_state().items() if not k.startswith("decoder.")}
    with pytest.raises(CheckpointError) as err:
        load_vqgan(bundle(tmp_path, {"state_dict": state}))
    assert "\n" not in str(err.value) and "more)" in str(err.value)


def test_wrong_target_is_refused(tmp_path):
    yaml = OmegaConf.load(FIXTURE / "model.yaml")
    yaml.model.target = "taming.models.vqgan.VQModel"
    shutil.copy(FIXTURE / "last.ckpt", tmp_path / "last.ckpt")
    OmegaConf.save(yaml, tmp_path / "model.yaml")
    with pytest.raises(CheckpointError) as err:
        load_vqgan(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "model.yaml") in message and "taming.models.vqgan.VQModel" in message


def test_save_load_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = GumbelVQGAN(TINY).eval()
    out = save_vqgan(model, None, tmp_path / "vqgan", extra={"global_step": 7})
    assert sorted(p.name for p in out.iterdir()) == ["last.ckpt", "model.yaml"]  # no temporary files left
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}  # readable by others, as any file
    yaml = OmegaConf.load(out / "model.yaml").model
    assert yaml.target == "taming.models.vqgan.GumbelVQ" and yaml.params.lossconfig.target.endswith("DummyLoss")
    ckpt = read_checkpoint(out / "last.ckpt")
    assert (ckpt["global_step"], ckpt["epoch"]) == (7, 0)
    loaded = load_vqgan(out)
    assert loaded.cfg == TINY
    assert list(loaded.state_dict()) == list(model.state_dict())
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    with torch.no_grad():
        assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_yaml_without_a_schedule_gets_a_constant_one():
    """taming's GumbelVQ requires `temperature_scheduler_config`: a config without one is saved with a constant
    schedule at its temperature."""
    schedule = taming_yaml(dataclasses.replace(TINY, temperature_scheduler_config=None))["model"]["params"][
        "temperature_scheduler_config"]
    assert {schedule["params"][k] for k in ("lr_start", "lr_max", "lr_min")} == {TINY.temperature}


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_vqgan(GumbelVQGAN(TINY), None, tmp_path)
    before = (tmp_path / "last.ckpt").read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_vqgan(GumbelVQGAN(TINY), None, tmp_path)
    assert (tmp_path / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "model.yaml"]
