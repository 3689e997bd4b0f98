"""`train_vq.py`: every `vq` option composes into its dataclasses, and a real run (subprocess) writes a bundle
that `load_vqgan` reads, with its metrics and picture."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from ofa import factory
from ofa.modules.vqgan import VQGANConfig
from ofa.train_vq import build_module, register_vq_schemas
from ofa.vqgan_io import load_vqgan
from subprocess_runs import run_command

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
VQ_OPTIONS = sorted(p.stem for p in (CONF / "vq").glob("*.yaml"))


def compose_vq(overrides: list[str], tmp_path: Path):
    register_vq_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train_vq", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path / "out")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("option", VQ_OPTIONS)
def test_vq_option_composes(option: str, tmp_path: Path) -> None:
    cfg = compose_vq([f"vq={option}", f"paths.root_dir={tmp_path}"], tmp_path)
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    model_cfg = VQGANConfig.from_dict(factory.plain(cfg.vq))
    assert model_cfg.factor == 8
    data = factory.typed(cfg.data)
    assert all(s >= data.crop_size for src in data.sources.values() for s in src.sizes)
    factory.typed(cfg.loss), factory.typed(cfg.optim)
    if option == "gumbel_f8":  # taming's f8 / 8192 architecture = VQGANConfig's defaults
        assert model_cfg == dataclasses.replace(VQGANConfig(), temperature_scheduler_config=None)
    else:
        assert cfg.out_dir == f"{tmp_path}/data/synthetic/vq_nano"
        assert sum(p.numel() for p in build_module(cfg).model.parameters()) < 3_000_000


def write_images(path: Path, size: int, n: int) -> str:
    import io

    import webdataset as wds
    from PIL import Image

    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for i in range(n):
            image = Image.new("RGB", (size, size), (255, 255, 255))
            image.paste((40 * i % 255, 80, 200), (i % 5, 2, i % 5 + size // 3, 2 + size // 3))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            writer.write({"__key__": f"img{i:03d}", "png": buf.getvalue(), "json": b"{}"})
    return str(path)


def test_train_vq_writes_a_loadable_bundle(tmp_path: Path) -> None:
    small, large = write_images(tmp_path / "small.tar", 16, 8), write_images(tmp_path / "large.tar", 40, 8)
    out = tmp_path / "vq"
    cmd = [sys.executable, str(ROOT / "train_vq.py"), f"paths.root_dir={tmp_path}", "synthetic_dir=null",
           f"out_dir={out}", "run_name=vq_test", "logger=csv",
           "vq.ch_mult=[1,1]", "vq.resolution=16", "vq.z_channels=32", "vq.embed_dim=32", "vq.n_embed=16",
           "data.crop_size=16", "data.sources.image_gen.sizes=[16]", "data.sources.world.sizes=[16,32]",
           f"data.sources.image_gen.train_shards={small}", f"data.sources.image_gen.val_shards={small}",
           f"data.sources.world.train_shards={large}", f"data.sources.world.val_shards={large}",
           "data.batch_size=4", "data.batches_per_epoch=3", "data.shuffle_buffer=4", "trainer.max_steps=3",
           "warmup.fraction=null", "warmup.steps=2", "warmup.kmeans_batches=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_command(cmd, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "VQGAN written to" in result.stdout
    model = load_vqgan(out)
    assert model.cfg.n_embed == 16 and model.cfg.factor == 2
    codes = model.encode(torch.zeros(1, 3, 16, 16))
    assert codes.shape == (1, 64) and model.decode(codes).shape == (1, 3, 16, 16)
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["val_metrics"]["val/psnr"] > 0
    (run_dir,) = (tmp_path / "outputs" / "vq_test").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {"val/psnr", "val/codes_used", "val/perplexity", "val/image_gen_16/psnr", "val/world_32/psnr"}
    assert expected <= set(metrics)
    assert (out / "reconstructions.png").is_file() and (run_dir / "reconstructions" / "step_000003.png").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # Lightning's, to resume (ckpt_path=last)


def test_a_misspelled_key_fails_on_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "train_vq.py"), f"paths.root_dir={tmp_path}", "vq.chanels=8"]
    result = run_command(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=60)
    assert result.returncode == 2 and "config error: Key 'chanels' not in 'VQSchema' (key: vq.chanels)" in result.stderr
