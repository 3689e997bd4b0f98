"""The training stream's schedule of OFA's pretraining extras: `every`/`count` sources, rows of several
samples, and the two mini-batches of each batch (`collate_mini_batches`)."""
from __future__ import annotations

from collections import Counter

import pytest

from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource


class TwoPerRow:
    """Wraps a task so that each row gives two samples (pretraining's main and second example)."""

    def __init__(self, task) -> None:
        self.task, self.name, self.tokenizer = task, task.name, task.tokenizer

    def preprocess(self, raw, split):
        sample = self.task.preprocess(raw, split)
        return None if sample is None else [sample, sample]


def pretrain_dm(stub_task, shards, batch_size=10, batches=38) -> OFADataModule:
    sources = [TaskSource(TwoPerRow(stub_task("pretrain")), shards["train"]),
               TaskSource(stub_task("text_infill", field="captions", image_size=8), shards["train"], every=8, count=2),
               TaskSource(stub_task("detection", field="label", image_size=8), shards["train"], every=8, count=1)]
    return OFADataModule(sources, LoaderConfig(batch_size=batch_size, num_workers=0, batches_per_epoch=batches,
                                               shuffle_buffer=8))


def test_extras_come_every_8th_row_as_a_second_mini_batch(stub_task, synthetic_shards) -> None:
    batches = list(pretrain_dm(stub_task, synthetic_shards).train_dataloader())
    tasks = Counter(t for b in batches for t in b["task"])
    # per 8 image-text rows (16 samples): 2 text infilling + 1 detection, exactly: 380 samples = 20 cycles of 19
    assert tasks == {"pretrain": 320, "text_infill": 40, "detection": 20}
    for b in batches:
        main, extras = b["mini_batches"]  # every batch has the same form, either part may be None
        assert set(main["task"]) == {"pretrain"} if main is not None else extras is not None
        if extras is not None:
            assert set(extras["task"]) <= {"text_infill", "detection"}
            assert extras["patch_images"].shape[-1] == 8  # each mini-batch stacks its own image size
        assert b["id"] == (main["id"] if main else []) + (extras["id"] if extras else [])
    assert sum(b["mini_batches"][1] is not None for b in batches) >= 10  # 3 extras per 19 samples, batches of 10


def test_scheduled_sources_alone_cannot_train(stub_task, synthetic_shards) -> None:
    only = [TaskSource(stub_task("detection", field="label"), synthetic_shards["train"], every=8)]
    with pytest.raises(ValueError, match="one must be drawn by weight"):
        list(OFADataModule(only, LoaderConfig(batch_size=4, num_workers=0, batches_per_epoch=1)).train_dataloader())
    with pytest.raises(ValueError, match=r"data.sources.detection.every=-1"):
        TaskSource(stub_task("detection", field="label"), synthetic_shards["train"], every=-1)
