"""`DataSkipLogger`: a tiny Trainer run on shards with corrupt members logs `data/skipped/<reason>` at epoch
ends and every N steps, and prints one summary line per stage; counts are per stage and summed over ranks."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import webdataset as wds
from PIL import Image
from pytorch_lightning.loggers import CSVLogger

from ofa.callbacks import DataSkipLogger
from ofa.callbacks.data_skips import format_summary
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource

# what one pass over `corrupt_shards` skips (each shard is read once per evaluation pass)
PASS = {"bad_json": 2, "bad_image": 1, "too_many_pixels": 1, "missing_fields": 1, "truncated_tar": 1,
        "not_tar": 1, "missing_file": 1}


def image_bytes(size: tuple[int, int] = (8, 8), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 200, 10)).save(buf, format=fmt)
    return buf.getvalue()


def good(key: str) -> dict:
    meta = {"id": key, "width": 8, "height": 8, "captions": ["a green square"]}
    return {"__key__": key, "jpg": image_bytes(), "json": json.dumps(meta).encode()}


def write_tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for s in samples:
            writer.write(s)
    return str(path)


@pytest.fixture
def corrupt_shards(tmp_path: Path) -> list[str]:
    """[mixed, truncated, garbage, missing, good]: one of every skip reason except preprocess errors."""
    mixed = [good("g0"), {**good("badjson"), "json": b"{nope"}, {"__key__": "nojson", "jpg": image_bytes()},
             {**good("badimage"), "jpg": b"\xff\xd8 not a jpeg"},
             {**good("bomb"), "jpg": image_bytes((1200, 1000))},
             {**good("nocaption"), "json": b'{"id": "nocaption", "captions": []}'}, good("g1")]
    full = write_tar(tmp_path / "full.tar", [good(f"t{i}") for i in range(4)])
    with tarfile.open(full) as tar:
        cut = tar.getmember("t2.jpg").offset_data + 10
    (tmp_path / "truncated.tar").write_bytes(Path(full).read_bytes()[:cut])
    (tmp_path / "garbage.tar").write_bytes(b"not a tar file\n" * 64)
    shutil.copy(full, tmp_path / "good.tar")
    write_tar(tmp_path / "mixed.tar", mixed)
    return [str(tmp_path / f"{n}.tar") for n in ("mixed", "truncated", "garbage", "missing", "good")]


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.weight * batch["patch_images"].mean()).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def datamodule(stub_task, shards: list[str], num_workers: int = 0) -> OFADataModule:
    return OFADataModule([TaskSource(stub_task(), train_shards=shards, val_shards=shards, test_shards=shards)],
                         LoaderConfig(batch_size=2, num_workers=num_workers, batches_per_epoch=4, shuffle_buffer=4,
                                      max_image_pixels=1_000_000))


def trainer(tmp_path: Path, callback: DataSkipLogger, **kwargs) -> pl.Trainer:
    args = dict(max_epochs=2, accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    return pl.Trainer(logger=CSVLogger(tmp_path, name="csv", version=0), callbacks=[callback], **{**args, **kwargs})


def csv_rows(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def summary_total(out: str, stage: str) -> int:
    match = re.search(rf"^data skipped during {stage} \(1 rank\): (\d+) - (.*)$", out, re.M)
    assert match, out
    return int(match.group(1))


def test_fit_logs_skips_at_epoch_ends_and_every_n_steps(stub_task, corrupt_shards, tmp_path, capsys) -> None:
    dm = datamodule(stub_task, corrupt_shards, num_workers=1)  # counts made in a worker process
    callback = DataSkipLogger(every_n_steps=2)
    trainer(tmp_path, callback).fit(TinyModule(), datamodule=dm)

    assert dm.skip_counts("val") == {r: 2 * PASS.get(r, 0) for r in dm.skip_counts()}  # 2 validation passes
    expected = {r: dm.skip_counts("train")[r] + dm.skip_counts("val")[r] for r in PASS}
    assert sum(dm.skip_counts("train").values()) > 0
    assert {r: n for r, n in callback.last_counts.items() if n} == {r: n for r, n in expected.items() if n}
    metrics = {k: float(v) for k, v in dm.trainer.callback_metrics.items()}
    assert metrics["data/skipped/total"] == sum(expected.values())
    for reason, n in expected.items():
        assert metrics[f"data/skipped/{reason}"] == n

    rows = csv_rows(tmp_path)
    logged_steps = {int(r["step"]) for r in rows if r.get("data/skipped/total")}
    assert {2, 4, 6, 8} <= logged_steps  # every 2 optimizer steps, plus the epoch ends
    totals = [float(r["data/skipped/total"]) for r in rows if r.get("data/skipped/total")]
    assert totals == sorted(totals) and totals[-1] == sum(expected.values())  # cumulative over the stage

    out = capsys.readouterr().out
    assert summary_total(out, "fit") == sum(expected.values())
    assert f"val: {2 * sum(PASS.values())}" in out and "missing_file:" in out


def test_validate_and_test_report_their_own_split(stub_task, corrupt_shards, tmp_path, capsys) -> None:
    dm = datamodule(stub_task, corrupt_shards)
    callback = DataSkipLogger(every_n_steps=0)
    t = trainer(tmp_path, callback, max_epochs=1)
    t.fit(TinyModule(), datamodule=dm)
    capsys.readouterr()
    results = t.validate(TinyModule(), datamodule=dm, verbose=False)
    assert callback.last_counts == {r: PASS.get(r, 0) for r in callback.last_counts}  # this stage only
    assert results[0]["data/skipped/total"] == sum(PASS.values())
    assert summary_total(capsys.readouterr().out, "validate") == sum(PASS.values())
    results = t.test(TinyModule(), datamodule=dm, verbose=False)
    assert results[0]["data/skipped/not_tar"] == 1 and results[0]["data/skipped/total"] == sum(PASS.values())
    assert summary_total(capsys.readouterr().out, "test") == sum(PASS.values())


def test_clean_data_says_none(stub_task, synthetic_shards, tmp_path, capsys) -> None:
    source = TaskSource(stub_task(), train_shards=synthetic_shards["train"], val_shards=synthetic_shards["val"])
    dm = OFADataModule([source], LoaderConfig(batch_size=4, num_workers=0, batches_per_epoch=2, shuffle_buffer=4))
    trainer(tmp_path, DataSkipLogger(), max_epochs=1).fit(TinyModule(), datamodule=dm)
    assert "data skipped during fit (1 rank): none" in capsys.readouterr().out
    assert dm.trainer.callback_metrics["data/skipped/total"] == 0


def test_format_summary() -> None:
    line = format_summary("fit", 2, {"bad_image": 3, "bad_json": 0, "missing_file": 9}, {"train": 10, "val": 2})
    assert line == "data skipped during fit (2 ranks): 12 - bad_image: 3, missing_file: 9 (train: 10, val: 2)"
    assert format_summary("test", 1, {"bad_image": 0}, {"test": 0}) == "data skipped during test (1 rank): none"
    with pytest.raises(ValueError, match="every_n_steps"):
        DataSkipLogger(every_n_steps=-1)


@pytest.mark.slow
def test_counts_are_summed_over_ranks(stub_task, corrupt_shards, tmp_path, capfd) -> None:
    """2 ranks (forked: no fresh interpreter to import): each evaluation shard is read by one rank, so the sum
    over ranks is exact."""
    dm = datamodule(stub_task, corrupt_shards)
    t = trainer(tmp_path, DataSkipLogger(every_n_steps=0), strategy="ddp_fork", devices=2, max_epochs=1,
                use_distributed_sampler=False)
    t.validate(TinyModule(), datamodule=dm, verbose=False)
    out = capfd.readouterr().out
    match = re.search(r"^data skipped during validate \(2 ranks\): (\d+) - ", out, re.M)
    assert match and int(match.group(1)) == sum(PASS.values()), out
    rows = [r for r in csv_rows(tmp_path) if r.get("data/skipped/total")]
    assert float(rows[-1]["data/skipped/total"]) == sum(PASS.values())
    assert float(rows[-1]["data/skipped/truncated_tar"]) == 1


def test_a_datamodule_without_skip_counts_gets_a_warning(tmp_path) -> None:
    class Plain(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([{"patch_images": torch.ones(2, 3, 4, 4)}] * 2, batch_size=None)

    t = trainer(tmp_path, DataSkipLogger(every_n_steps=1), max_epochs=1)
    with pytest.warns(UserWarning, match="no skip_counts"):
        t.fit(TinyModule(), datamodule=Plain())
    assert not any(k.startswith("data/skipped") for k in t.callback_metrics)
