"""`ThroughputLogger`: `train/samples_per_sec` of all ranks together once per `window` batches, on a fake
clock, trainer and module; validation restarts the window."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ofa.callbacks import throughput
from ofa.callbacks.throughput import ThroughputLogger


class FakeModule:
    """Records what the callback logs."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, float, dict]] = []

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged.append((name, value, kwargs))


def fake_clock(monkeypatch: pytest.MonkeyPatch, times: list[float]) -> None:
    ticks = iter(times)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))


def run_batches(callback: ThroughputLogger, trainer, module: FakeModule, n: int, batch_size: int) -> None:
    for i in range(n):
        batch = {"id": [str(j) for j in range(batch_size)]}
        callback.on_train_batch_start(trainer, module, batch, i)
        callback.on_train_batch_end(trainer, module, None, batch, i)


def test_logs_samples_per_second_of_all_ranks_after_each_window(monkeypatch) -> None:
    fake_clock(monkeypatch, [10.0, 12.0, 20.0, 21.0])  # window starts and ends
    callback, module, trainer = ThroughputLogger(window=3), FakeModule(), SimpleNamespace(world_size=2)
    run_batches(callback, trainer, module, 2, batch_size=4)
    assert module.logged == []  # not a full window yet
    run_batches(callback, trainer, module, 4, batch_size=4)
    rates = [value for name, value, kwargs in module.logged if name == "train/samples_per_sec"]
    assert rates == [3 * 4 * 2 / 2.0, 3 * 4 * 2 / 1.0]  # 3 batches x 4 samples x 2 ranks per window
    assert all(kwargs == {"rank_zero_only": True} for _, _, kwargs in module.logged)


def test_validation_restarts_the_window(monkeypatch) -> None:
    fake_clock(monkeypatch, [10.0, 20.0, 20.5])
    callback, module, trainer = ThroughputLogger(window=2), FakeModule(), SimpleNamespace(world_size=1)
    run_batches(callback, trainer, module, 1, batch_size=4)
    callback.on_validation_start(trainer, module)  # the batch before validation is dropped, not averaged in
    run_batches(callback, trainer, module, 2, batch_size=4)
    assert module.logged == [("train/samples_per_sec", 2 * 4 / 0.5, {"rank_zero_only": True})]
