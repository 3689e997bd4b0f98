"""A non-editable install can train: the wheel holds every config and the `ofa-train` console script, and
the installed package trains from a directory outside the checkout (the configs it reads are its own)."""
from __future__ import annotations

import configparser
import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_train import base_overrides

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "ofa", "conf"]  # what the build reads (links kept as links)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of a copy of the sources (the build's `build/` and egg-info stay out of the checkout)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(dist)], cwd=src, check=True, capture_output=True, timeout=300)
    (found,) = dist.glob("ofa-*.whl")
    return found


def console_scripts(names: list[str], archive: zipfile.ZipFile) -> dict[str, str]:
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(archive.read(entry_points).decode())
    return dict(parser["console_scripts"])


def test_wheel_holds_every_config_package_and_the_ofa_train_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        scripts = console_scripts(names, archive)
    configs = {f"ofa/conf/{p}" for p in glob.glob("**/*.yaml", root_dir=ROOT / "conf", recursive=True)}
    assert "ofa/conf/model/ofa_nano.yaml" in configs and "ofa/conf/train.yaml" in configs  # conf/model: a link
    assert configs <= set(names), sorted(configs - set(names))
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "ofa").rglob("__init__.py")}
    assert packages <= set(names), sorted(packages - set(names))
    assert scripts["ofa-train"] == "ofa.train:main"


def test_installed_ofa_train_runs_outside_the_checkout(wheel: Path, synthetic_data_dir: Path,
                                                       tmp_path: Path) -> None:
    """`pip install --target` of the wheel (a fresh venv would reinstall torch): pip writes the `ofa-train`
    script; the installed package comes first on PYTHONPATH, ahead of the checkout's editable install."""
    site, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    env.pop("OFA_ROOT", None)
    args = [o for o in base_overrides(synthetic_data_dir, cwd) if not o.startswith("hydra.")]
    proc = subprocess.run([str(site / "bin" / "ofa-train"), *args, "debug=fdr", "logger=none"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = (cwd / "outputs" / "caption_ofa_nano").iterdir()  # paths.root_dir: the current directory
    assert "val/caption/cider" in (run_dir / "metrics.json").read_text()
    hydra_yaml = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {site / 'ofa' / 'conf'}" in hydra_yaml  # the installed configs, not the checkout's
