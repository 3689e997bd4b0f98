"""`OFADataModule`: equal train batches per rank, per-epoch reshuffle, weighted mixtures, per-task eval."""
from __future__ import annotations

from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource, build_sources


def ids_of(loader) -> list[list[str]]:
    return [batch["id"] for batch in loader]


def caption_dm(stub_task, shards: dict[str, str], **kwargs) -> OFADataModule:
    args = dict(batch_size=4, num_workers=0, batches_per_epoch=5, shuffle_buffer=16, seed=7)
    source = TaskSource(stub_task(), train_shards=shards["train"], val_shards=shards["val"], test_shards=shards["test"])
    return OFADataModule([source], LoaderConfig(**{**args, **kwargs}))


def test_train_loaders_of_two_ranks_yield_equal_batch_counts(stub_task, synthetic_shards) -> None:
    runs = []
    for rank in (0, 1):
        loader = caption_dm(stub_task, synthetic_shards, rank=rank, world_size=2, num_workers=2).train_dataloader()
        assert len(loader) == 5
        runs.append(ids_of(loader))
    assert [len(r) for r in runs] == [5, 5]  # 5 batches over 2 workers: 3 + 2
    assert all(len(b) == 4 for r in runs for b in r)
    assert runs[0] != runs[1]  # ranks draw different samples


def test_each_epoch_reshuffles_reproducibly(stub_task, synthetic_shards) -> None:
    dm = caption_dm(stub_task, synthetic_shards, num_workers=2, persistent_workers=True)
    loader = dm.train_dataloader()
    epoch0, epoch1 = ids_of(loader), ids_of(loader)  # the loader counts passes (no trainer)
    assert epoch0 != epoch1
    again = caption_dm(stub_task, synthetic_shards, num_workers=2).train_dataloader()  # fresh workers
    again.set_epoch(1)
    assert ids_of(again) == epoch1


def test_mixture_frequencies_follow_the_weights(stub_task, synthetic_shards) -> None:
    mixture = [TaskSource(stub_task("caption"), synthetic_shards["train"], weight=3.0),
               TaskSource(stub_task("classify", field="label"), synthetic_shards["train"], weight=1.0)]
    dm = OFADataModule(mixture, LoaderConfig(batch_size=16, num_workers=0, batches_per_epoch=50, shuffle_buffer=16))
    tasks = Counter(t for batch in dm.train_dataloader() for t in batch["task"])
    assert sum(tasks.values()) == 800
    assert tasks["caption"] / 800 == pytest.approx(0.75, abs=0.06)  # 4 standard deviations


def test_a_task_joins_the_mixture_at_its_start_epoch(stub_task, synthetic_shards) -> None:
    mixture = [TaskSource(stub_task("caption"), synthetic_shards["train"], start_epoch=1),
               TaskSource(stub_task("classify", field="label"), synthetic_shards["train"])]
    dm = OFADataModule(mixture, LoaderConfig(batch_size=8, num_workers=0, batches_per_epoch=10, shuffle_buffer=8))
    loader = dm.train_dataloader()  # no trainer: each pass is the next epoch
    epoch0 = Counter(t for batch in loader for t in batch["task"])
    epoch1 = Counter(t for batch in loader for t in batch["task"])
    assert epoch0 == {"classify": 80}  # a warm start on the other task
    assert epoch1["caption"] / 80 == pytest.approx(0.5, abs=0.25) and sum(epoch1.values()) == 80


def test_evaluation_gives_one_loader_per_task(stub_task, synthetic_shards) -> None:
    tasks = {"caption": stub_task("caption"), "classify": stub_task("classify", field="label")}
    shared = {"train_shards": synthetic_shards["train"], "val_shards": synthetic_shards["val"]}
    entries = {"caption": {}, "classify": {"test_shards": synthetic_shards["test"]}}  # as data.sources
    dm = OFADataModule(build_sources(entries, tasks, defaults=shared),
                       LoaderConfig(batch_size=4, eval_batch_size=5, num_workers=0))
    val = dm.val_dataloader()
    assert dm.eval_task_names("val") == ["caption", "classify"] and dm.eval_task_names("test") == ["classify"]
    for name, loader in zip(dm.eval_task_names("val"), val):
        batches = list(loader)
        assert [len(b["id"]) for b in batches] == [5, 5, 5, 1]
        assert {t for b in batches for t in b["task"]} == {name}
    assert len(dm.test_dataloader()) == 1
    assert dm.skip_counts()["missing_fields"] == 0


def test_bad_configuration_gives_clear_errors(stub_task, synthetic_shards) -> None:
    with pytest.raises(ValueError, match="non-empty list of TaskSource"):
        OFADataModule([])
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        build_sources({"vqa": {"train_shards": synthetic_shards["train"]}}, tasks={})
    with pytest.raises(ValueError, match="unknown keys"):
        build_sources({"caption": {"shards": synthetic_shards["train"]}}, tasks={"caption": stub_task()})
    with pytest.raises(ValueError, match="matches no files"):
        OFADataModule([TaskSource(stub_task(), train_shards="/nonexistent/train-*.tar")])
    with pytest.raises(ValueError, match="no train_shards"):
        OFADataModule([TaskSource(stub_task(), val_shards=synthetic_shards["val"])]).train_dataloader()
    with pytest.raises(ValueError, match=r"data.sources.caption.weight=0.0: must be > 0"):
        TaskSource(stub_task(), synthetic_shards["train"], weight=0.0)
    with pytest.raises(ValueError, match=r"data.sources.caption.start_epoch=-1: must be >= 0"):
        TaskSource(stub_task(), synthetic_shards["train"], start_epoch=-1)
    with pytest.raises(ValueError, match="some task must start at epoch 0"):
        OFADataModule([TaskSource(stub_task(), synthetic_shards["train"], start_epoch=1)]).train_dataloader()
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        LoaderConfig(batch_size=0)


def test_training_data_that_is_all_bad_fails_loudly_instead_of_hanging(stub_task, synthetic_shards,
                                                                      tmp_path) -> None:
    missing = TaskSource(stub_task(), train_shards=str(tmp_path / "missing.tar"))
    dm = OFADataModule([missing], LoaderConfig(num_workers=0))
    with pytest.raises(RuntimeError, match="consecutive shards gave no samples"):
        next(iter(dm.train_dataloader()))
    dm = OFADataModule([TaskSource(stub_task("vqa", field="no_such_field"), train_shards=synthetic_shards["train"])],
                       LoaderConfig(num_workers=0))
    with pytest.raises(RuntimeError, match="for task 'vqa': 1000 consecutive samples were skipped"):
        next(iter(dm.train_dataloader()))
    assert dm.skip_counts("train")["missing_fields"] == 1000


class _Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[str]] = {}
        self.validated: list[str] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch["id"])
        return (self.weight * batch["patch_images"].mean()).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.validated.extend(batch["id"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_runs_batches_per_epoch_with_the_trainer_epoch_and_validates_all(stub_task, synthetic_shards) -> None:
    dm = caption_dm(stub_task, synthetic_shards, batches_per_epoch=3)
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 3 and trainer.global_step == 6
    assert sorted(model.validated) == sorted(f"val-{i:06d}" for i in range(16) for _ in range(2))  # 2 epochs
    for epoch in (0, 1):
        loader = caption_dm(stub_task, synthetic_shards, batches_per_epoch=3).train_dataloader()
        loader.set_epoch(epoch)
        assert model.seen[epoch] == [i for batch in ids_of(loader) for i in batch]


@pytest.mark.parametrize("saved_at, position, resume_at", [
    ("mid_epoch", {"epoch": 1, "batches": 3}, (1, 3)),
    ("epoch_end", {"epoch": 1, "batches": 5}, (2, 0)),  # on_train_epoch_end: the epoch not yet counted completed
    ("after_epoch", {"epoch": 2, "batches": 0}, (2, 0)),  # after it (a SIGTERM seen at the epoch's end)
])
def test_train_position_in_checkpoints_follows_the_fit_loop(stub_task, synthetic_shards, saved_at: str,
                                                            position: dict, resume_at: tuple) -> None:
    """The saved stream position at each point Lightning may save during epoch 1 (5 batches per epoch), with
    Lightning's own progress counters, and where a resume starts drawing batches."""
    from types import SimpleNamespace

    from pytorch_lightning.loops.progress import _BatchProgress, _Progress

    epochs, batches = _Progress(), _BatchProgress()
    for _ in range(2):  # epochs 0 and 1 started; 0 completed
        epochs.increment_ready(), epochs.increment_started()
    epochs.increment_processed(), epochs.increment_completed()
    for _ in range(3 if saved_at == "mid_epoch" else 5):
        batches.increment_ready(), batches.increment_started(), batches.increment_processed()
        batches.increment_completed()
    if saved_at != "mid_epoch":
        epochs.increment_processed()
    if saved_at == "after_epoch":
        epochs.increment_completed()
    dm = caption_dm(stub_task, synthetic_shards)
    dm.trainer = SimpleNamespace(current_epoch=epochs.current.completed,
                                 fit_loop=SimpleNamespace(epoch_progress=epochs,
                                                          epoch_loop=SimpleNamespace(batch_progress=batches)))
    state = dm.state_dict()
    assert state == {"train_position": position}
    fresh = caption_dm(stub_task, synthetic_shards)
    fresh.load_state_dict(state)
    assert fresh._resume_at == resume_at
