"""ofa-predict (a folder with a corrupt image, JSONL + --draw, exit statuses) and Trainer.predict on a datamodule
(the LightningModule's predict_step), with the trained ofa_nano of tests/trained_nano.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from PIL import Image

from ofa.checkpoint import read_checkpoint
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.datamodules.synthetic import SyntheticConfig, make_sample
from ofa.lit_module import OFALitModule
from ofa.predict import main
from ofa.safe_load import safe_torch_load
from ofa.tokenizer import build_tokenizer
from ofa.utils.optim import OptimConfig, ScheduleConfig
from trained_nano import build_tasks


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three synthetic images, one corrupt .jpg and a text file (not an image: ignored)."""
    folder = tmp_path_factory.mktemp("inputs")
    for i in range(3):
        _, jpeg = make_sample(SyntheticConfig(image_size=64), "val", i)
        (folder / f"img{i}.jpg").write_bytes(jpeg)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("ignored")
    return folder


def predict(args: list[str], capsys) -> tuple[int, list[dict], str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.strip()], captured.err


def test_a_folder_with_a_corrupt_image(trained_nano, image_folder, capsys, tmp_path) -> None:
    out = tmp_path / "captions.jsonl"
    code = main(["--quiet", "--checkpoint", str(trained_nano.folder), str(image_folder), "--out", str(out),
                 "--batch-size", "2", "--gen", "beam_size=2"])
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0
    assert [Path(r["image"]).name for r in rows] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert all(isinstance(r["answer"], str) and r["answer"] and r["task"] == "caption" for r in rows)
    assert "skipped" in err and "broken.jpg" in err and "notes.txt" not in err
    assert "3 result(s), 1 input(s) skipped" in err


def test_jsonl_grounding_draws_boxes(trained_nano, image_folder, capsys, tmp_path) -> None:
    lines = [{"image": str(image_folder / "img0.jpg"), "text": "the circle"},
             {"image": str(image_folder / "img1.jpg")}]  # takes --text
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, rows, _ = predict(["--checkpoint", str(trained_nano.folder), "--task", "grounding", "--text", "a square",
                             str(tmp_path / "in.jsonl"), "--draw", str(tmp_path / "drawn")], capsys)
    assert code == 0 and [r["text"] for r in rows] == ["the circle", "a square"]
    for row in rows:
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64
        assert Image.open(row["file"]).size == (64, 64)


def test_nothing_processed_exits_1_and_bad_usage_exits_2(trained_nano, image_folder, capsys) -> None:
    code, rows, err = predict(["--checkpoint", str(trained_nano.folder), str(image_folder / "broken.jpg"),
                               str(image_folder / "missing.png")], capsys)
    assert code == 1 and rows == [] and "missing.png" in err and "0 result(s), 2 input(s) skipped" in err
    code, _, err = predict(["--checkpoint", str(trained_nano.folder), "--gen", "beams=2", str(image_folder)], capsys)
    assert code == 2 and "unknown decoding setting(s) ['beams']" in err
    code, _, err = predict(["--checkpoint", str(trained_nano.folder), "--task", "vqa", str(image_folder)], capsys)
    assert code == 2 and "--task vqa needs a text per input" in err


def test_trainer_predict_on_a_datamodule(trained_nano) -> None:
    """`Trainer.predict(module, datamodule=dm)`: one list of rows per batch, the task's decoding of each sample."""
    tokenizer = build_tokenizer("trained", trained_nano.data_dir)
    tasks = build_tasks(tokenizer, trained_nano.settings)
    module = OFALitModule(read_checkpoint(trained_nano.ckpt).config, {"grounding": tasks["grounding"]},
                          OptimConfig(), ScheduleConfig())
    module.configure_model()
    module.load_state_dict(safe_torch_load(trained_nano.ckpt)["state_dict"], strict=False)
    dm = OFADataModule([TaskSource(tasks["grounding"], test_shards=str(trained_nano.data_dir / "test-*.tar"))],
                       LoaderConfig(batch_size=8, num_workers=0))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, datamodule=dm)
    rows = [row for batch in batches for row in batch]
    assert len(rows) == 16 and all(len(r["box"]) == 4 and r["prediction"] for r in rows)
