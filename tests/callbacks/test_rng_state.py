"""`RNGStateCallback`: the global RNG states (torch, python, numpy) round-trip through a weights_only
checkpoint, and after a resume the first training batch draws exactly the numbers the saved run would have
drawn, each DDP rank its own."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from ofa.callbacks.rng_state import RNGStateCallback, capture_rng, restore_rng
from ofa.safe_load import safe_torch_load


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def draws() -> tuple[list[float], float, list[float]]:
    """The next numbers of each global RNG."""
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def test_capture_and_restore_give_back_the_exact_next_numbers() -> None:
    seed_all(1)
    state = capture_rng()
    expected = draws()
    assert draws() != expected  # the generators moved on
    restore_rng(state)
    assert draws() == expected


def test_states_survive_a_weights_only_checkpoint(tmp_path) -> None:
    seed_all(2)
    torch.save({"callbacks": {"RNGStateCallback": capture_rng()}}, tmp_path / "last.ckpt")
    expected = draws()
    seed_all(3)
    restore_rng(safe_torch_load(tmp_path / "last.ckpt")["callbacks"]["RNGStateCallback"])
    assert draws() == expected


def test_resume_restores_right_before_the_first_training_batch_only() -> None:
    seed_all(4)
    saved = RNGStateCallback().state_dict()
    expected = draws()
    resumed = RNGStateCallback()
    resumed.load_state_dict(saved)
    draws()  # whatever runs between loading and the first batch does not matter
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    resumed.on_train_batch_start(trainer, None, None, 0)
    assert draws() == expected
    resumed.on_train_batch_start(trainer, None, None, 1)  # later batches leave the RNGs alone
    assert draws() != expected


def test_each_rank_gets_its_own_states_and_rank_zeros_on_another_world_size() -> None:
    states, expected = [], []
    for seed in (5, 6):
        seed_all(seed)
        states.append(capture_rng())
        expected.append(draws())
    saved = {**states[0], "per_rank": states}  # what rank 0 writes under DDP
    for world_size, rank, want in ((2, 1, expected[1]), (2, 0, expected[0]), (3, 2, expected[0])):
        callback = RNGStateCallback()
        callback.load_state_dict(saved)
        seed_all(7)
        callback.on_train_batch_start(SimpleNamespace(world_size=world_size, global_rank=rank), None, None, 0)
        assert draws() == want, (world_size, rank)
