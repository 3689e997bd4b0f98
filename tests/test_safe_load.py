"""ofa.safe_load: checkpoints with the allowed config classes load; any other pickle global is refused,
named on one line, and never run (zip and legacy pickles alike)."""
from __future__ import annotations

import argparse
import pathlib
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from ofa.safe_load import CheckpointError, safe_torch_load


class Touch:
    """Unpickling this would create a file."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


def test_fairseq_config_classes_are_allowed(tmp_path):
    path = tmp_path / "ok.pt"
    cfg = OmegaConf.create({"model": {"arch": "ofa_tiny"}, "optimization": {"lr": [1e-5]}})
    torch.save({"args": argparse.Namespace(arch="ofa_tiny"), "cfg": cfg, "model": {"w": torch.ones(2)}}, path)
    state = safe_torch_load(path)
    assert state["args"].arch == "ofa_tiny" and state["cfg"].model.arch == "ofa_tiny"
    assert torch.equal(state["model"]["w"], torch.ones(2))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": None, "extra": Touch(target)}, bad)
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "pathlib" in message
    assert not target.exists()
    with open(tmp_path / "legacy.pt", "wb") as f:  # a plain (non-zip) pickle is refused too
        pickle.dump({"model": Touch(target)}, f)
    with pytest.raises(CheckpointError, match="legacy.pt"):
        safe_torch_load(tmp_path / "legacy.pt")
    assert not target.exists()
