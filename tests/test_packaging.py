"""A non-editable install can train: the wheel holds every config and every console script of pyproject.toml,
each script resolves to a callable that answers `--help`, and the installed package trains from a directory
outside the checkout (the configs it reads are its own)."""
from __future__ import annotations

import configparser
import glob
import logging
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from test_train import base_overrides

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "ofa", "conf"]  # what the build reads (links kept as links)
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]  # name -> "module:function"
# Hydra's `--help` lists every config group, deep-copying the ConfigStore once per group: 3-8 s a script on an
# idle machine, 20 s under load; argparse's `--help` takes milliseconds.
HYDRA_SCRIPTS = ("ofa-train", "ofa-train-vq")


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


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --target` of the wheel (a fresh venv would reinstall torch): the package and pip's scripts
    in `bin/`; put it first on PYTHONPATH, ahead of the checkout's editable install."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return site


def console_scripts(names: list[str], archive: zipfile.ZipFile) -> dict[str, str]:
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(archive.read(entry_points).decode())
    return dict(parser["console_scripts"])


def test_wheel_holds_every_config_package_and_declared_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        scripts = console_scripts(names, archive)
    configs = {f"ofa/conf/{p}" for p in glob.glob("**/*.yaml", root_dir=ROOT / "conf", recursive=True)}
    assert "ofa/conf/model/ofa_nano.yaml" in configs and "ofa/conf/train.yaml" in configs  # conf/model: a link
    assert configs <= set(names), sorted(configs - set(names))
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "ofa").rglob("__init__.py")}
    assert packages <= set(names), sorted(packages - set(names))
    assert scripts == DECLARED and scripts["ofa-train"] == "ofa.train:main"


@pytest.fixture
def hydra_and_logging_restored():
    """`ofa-train --help` / `ofa-train-vq --help` run Hydra in this process: it configures the root logger and
    sets its global HydraConfig; both are put back for the tests after."""
    handlers, level, hydra_cfg = logging.root.handlers[:], logging.root.level, HydraConfig.instance().cfg
    yield
    logging.root.handlers[:], HydraConfig.instance().cfg = handlers, hydra_cfg
    logging.root.setLevel(level)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HYDRA_SCRIPTS else n
                                  for n in sorted(DECLARED)])
def test_console_script_resolves_and_answers_help(name: str, monkeypatch, capsys, hydra_and_logging_restored) -> None:
    """What pip's script does (`sys.exit(main())` with argv = [name, '--help']), in this process: a `--help`
    subprocess per script would cost ~4 s of imports each. The installed file itself: the next test."""
    main = EntryPoint(name, DECLARED[name], "console_scripts").load()
    assert callable(main), DECLARED[name]
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    if name in HYDRA_SCRIPTS:  # Hydra's help: the config groups
        assert f"{name.removeprefix('ofa-').replace('-', '_')} is powered by Hydra" in out
        assert "== Configuration groups ==" in out and "\ndata: " in out, out
    else:  # argparse's
        assert out.startswith(f"usage: {name} "), out


def test_installed_scripts_are_every_declared_one_and_run(installed: Path) -> None:
    """pip wrote a script for each declared entry point; one of them run as a user would, from the install."""
    assert set(DECLARED) <= {p.name for p in (installed / "bin").iterdir()}
    proc = subprocess.run([str(installed / "bin" / "ofa-predict"), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(installed)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ofa-predict ") and "--checkpoint" in proc.stdout


def test_installed_ofa_train_runs_outside_the_checkout(installed: Path, synthetic_data_dir: Path,
                                                       tmp_path: Path) -> None:
    """The installed `ofa-train` trains from another directory with the installed package's own configs."""
    site, cwd = installed, tmp_path / "elsewhere"
    cwd.mkdir()
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
