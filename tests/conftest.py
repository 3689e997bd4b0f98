"""Shared fixtures: a tiny synthetic shapes dataset (WebDataset shards) and its trained tokenizer.

- `synthetic_data_dir`: Path of the dataset (48 train / 16 val / 16 test images of 64x64, 8 per shard:
  `train-{000000..000005}.tar`, `val-{000000..000001}.tar`, `test-...`, plus answers.json, classes.json,
  sizes.json, summary.json and tokenizer.json). Session-scoped; generated in about a second.
- `synthetic_shards`: split -> absolute brace pattern of that split's shards.
- `tokenizer`: the dataset's `OFATokenizer` (trained layout, 8192 codes, 1000 bins).
- `tiny_vqgan_dir`: a random 8x-downsampling Gumbel VQGAN (32 codes) saved as model.yaml + last.ckpt.
- `stub_task`: factory of a minimal task (`name`, `preprocess`) for data tests that need no real task.
- `trained_nano`: an ofa_nano trained briefly on a synthetic world of its own (tests/trained_nano.py), for the
  user-surface tests.
"""
from __future__ import annotations

import os

# The suite's models are tiny and several tests overlap subprocesses on the 2 cores: one OpenMP thread per
# process (inherited by every train.py the tests start) avoids threads spinning against each other. Set
# before torch is imported; a value given by the caller wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

# The project (torch, Lightning) is imported by the fixtures, not here: pytest-xdist's controller process loads this
# file too and runs no test; with these imports at the top it spent ~9 s on them before starting the workers.
if TYPE_CHECKING:
    from ofa.tokenizer import OFATokenizer
    from stub_tasks import StubTask

@pytest.fixture(autouse=True)
def _process_state_restored():
    """Each test leaves `os.environ` and Lightning's rank as it found them: a Trainer built for a simulated
    cluster writes MASTER_ADDR into the environment (a SLURM test's `gpu01` made every later DDP run of the
    session wait for that host) and its global rank into `rank_zero_only.rank` (rank 5: later in-process
    loggers stayed silent, as on a non-zero rank)."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    saved, rank = dict(os.environ), getattr(rank_zero_only, "rank", None)
    yield
    os.environ.clear()
    os.environ.update(saved)
    if rank is not None:
        rank_zero_only.rank = rank


SYNTHETIC_TEST_CONFIG = dict(num_train=48, num_val=16, num_test=16, image_size=64, shard_size=8, vocab_size=500)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ofa.datamodules.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", **SYNTHETIC_TEST_CONFIG)


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_data_dir: Path) -> dict[str, str]:
    patterns = json.loads((synthetic_data_dir / "summary.json").read_text())["shards"]
    return {split: str(synthetic_data_dir / p) for split, p in patterns.items() if p}


@pytest.fixture(scope="session")
def tokenizer(synthetic_data_dir: Path) -> OFATokenizer:
    from ofa.tokenizer import build_tokenizer

    return build_tokenizer("trained", synthetic_data_dir)


@pytest.fixture(scope="session")
def stub_task(tokenizer: OFATokenizer) -> Callable[..., StubTask]:
    from stub_tasks import StubTask  # a module of its own: spawned DDP ranks unpickle it by name

    def make(name: str = "caption", field: str = "captions", image_size: int = 16) -> StubTask:
        return StubTask(tokenizer, name, field, image_size)

    return make


@pytest.fixture(scope="session")
def tiny_vqgan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from ofa.modules.vqgan import GumbelVQGAN, VQGANConfig
    from ofa.vqgan_io import save_vqgan

    torch.manual_seed(0)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8,
                      n_embed=32, resolution=64)
    return save_vqgan(GumbelVQGAN(cfg), cfg, tmp_path_factory.mktemp("vqgan") / "vq")


@pytest.fixture(scope="session")
def trained_nano(tmp_path_factory: pytest.TempPathFactory):
    """An ofa_nano trained 250 steps on a synthetic world of its own (tests/trained_nano.py): `.ckpt`, `folder`,
    `settings`, `data_dir`; reads the large object's colour. Shared by the API, ofa-predict and demo tests
    (about 30 s, once per session: under pytest-xdist the first worker to need it trains it in the workers' common
    temporary folder, the others wait for it and read it)."""
    from filelock import FileLock
    from trained_nano import train_nano

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder of all workers' temporary folders
    with FileLock(str(root / "trained_nano.lock")):
        return train_nano(root / "trained_nano")
