"""W&B sample tables of a real offline run (tiny model, validate on caption + grounding): image files under
the run's files/media, table json cells that reference them (wandb alone writes the string "Image"),
predicted and reference boxes on grounding rows, and the `wandb sync` hint."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.lit_module import ModuleConfig, OFALitModule
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.grounding import GroundingConfig, GroundingTask
from ofa.utils.optim import OptimConfig, ScheduleConfig
from ofa.utils.wandb import draw_boxes, offline_run_dirs, print_sync_hint

TINY = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}


def make_tasks(tokenizer) -> dict:
    caption = CaptionTask(tokenizer, CaptionConfig(image_size=32, meteor=False, ptb_tokenizer=False,
                                                   generation=GenerationConfig(beam_size=2, max_len_b=4)))
    grounding = GroundingTask(tokenizer, GroundingConfig(
        image_size=32, max_image_size=32, generation=GenerationConfig(beam_size=2, min_len=4, max_len_a=0.0,
                                                                      max_len_b=4)))
    return {"caption": caption, "grounding": grounding}


def validate_offline(tokenizer, shards: dict, root: Path) -> tuple[Path, str]:
    """Validate a tiny model with an offline WandbLogger; (offline run dir, stdout of the sync hint)."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    tasks = make_tasks(tokenizer)
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY)
    module = OFALitModule(cfg, tasks, OptimConfig(lr=1e-3), ScheduleConfig(), ModuleConfig(log_samples=2))
    dm = OFADataModule([TaskSource(t, val_shards=shards["val"]) for t in tasks.values()],
                       LoaderConfig(batch_size=2, eval_batch_size=2, num_workers=0))
    logger = WandbLogger(project="ofa-test", save_dir=str(root), offline=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(root))
    torch.manual_seed(0)
    trainer.validate(module, datamodule=dm)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_sync_hint(trainer)
    (run_dir,) = offline_run_dirs(trainer.loggers)
    wandb.finish()
    return run_dir, out.getvalue()


@pytest.fixture(scope="module")
def offline_run(tokenizer, synthetic_shards, tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root),
                           "WANDB_DATA_DIR": str(root / "data"), "WANDB_CACHE_DIR": str(root / "cache"),
                           "WANDB_CONFIG_DIR": str(root / "config")}.items():
            mp.setenv(var, value)
        yield validate_offline(tokenizer, synthetic_shards, root)


def table(run_dir: Path, task: str) -> dict:
    (path,) = (run_dir / "files" / "media" / "table" / "val" / task).glob("samples_*.table.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("task", ["caption", "grounding"])
def test_table_cells_reference_image_files(offline_run, task: str) -> None:
    run_dir, _ = offline_run
    data = table(run_dir, task)
    assert data["columns"] == ["id", "image", "input", "prediction", "references"] and len(data["data"]) == 2
    for row in data["data"]:
        image = row[1]
        assert isinstance(image, dict) and image["_type"] == "image-file", image  # not the string "Image"
        assert (run_dir / "files" / image["path"]).is_file() and image["path"].startswith(f"media/images/val/{task}/")
        assert row[3] and row[4]  # a prediction and a reference


def test_grounding_rows_carry_predicted_and_reference_boxes(offline_run) -> None:
    for row in table(offline_run[0], "grounding")["data"]:
        assert len(row[3].split()) == 4 and len(row[4].split()) == 4  # "x0 y0 x1 y1" in original pixels
        assert row[2]  # the referring expression


def test_sync_hint_names_the_offline_run(offline_run) -> None:
    run_dir, printed = offline_run
    assert printed == f"W&B run saved offline; upload it with: wandb sync {run_dir}\n"
    assert run_dir.name.startswith("offline-run-") and (run_dir / "files").is_dir()


def test_boxes_are_scaled_onto_the_model_input() -> None:
    picture = torch.zeros(32, 32, 3, dtype=torch.uint8)
    drawn = draw_boxes(picture, {"box": [0, 0, 50, 50], "gt": [50, 50, 100, 100], "scale": (0.32, 0.32)})
    assert tuple(drawn[0, 8]) == (255, 0, 0) and tuple(drawn[16, 8]) == (255, 0, 0)  # predicted: 0..16 px, red
    assert tuple(drawn[16, 24]) == (0, 255, 0) and tuple(drawn[8, 8]) == (0, 0, 0)  # reference: 16..32 px, green
