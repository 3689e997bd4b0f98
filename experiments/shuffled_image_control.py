"""Does a trained run read the image? Its test metrics with the true images and with every batch's images
rolled by one (each sample gets another sample's image; prompts, targets and references stay).

    .venv/bin/python experiments/shuffled_image_control.py outputs/<run_name>/<time> [--ckpt best|last]

A task that really uses the image drops to about its trivial baseline on shuffled images; one that answers
from the text prior alone keeps its score. Prints one table: task metric, true images, shuffled images.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ofa import factory  # noqa: E402
from ofa.schemas import register_schemas  # noqa: E402
from ofa.utils.report import collect_metrics  # noqa: E402


class RollImages(pl.Callback):
    """Gives sample i the image of sample i-1 in every test batch (a batch of one keeps its own)."""

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if batch.get("patch_images") is not None:
            batch["patch_images"] = batch["patch_images"].roll(1, dims=0)


def run_config(run_dir: Path) -> Any:
    """The run's config, composed again from its command-line overrides (`.hydra/overrides.yaml`) so that every
    node is schema-typed as in the run (a plain load of `.hydra/config.yaml` is not)."""
    overrides = list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.root_dir={ROOT}", f"paths.output_dir={run_dir}",
                                           f"run_name={run_dir.parent.name}", "data.num_workers=0"])


def test_metrics(cfg: Any, ckpt: Path, shuffle: bool) -> dict[str, float]:
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RollImages()] if shuffle else [])
    trainer.test(module, datamodule=factory.build_datamodule(cfg.data, tasks), ckpt_path=str(ckpt),
                 weights_only=True, verbose=False)
    return collect_metrics(trainer.callback_metrics, ("test/",))


def load_run(argv: list[str] | None, description: str, default_ckpt: str) -> tuple[Any, Path]:
    """`RUN_DIR [--ckpt best|last]` from the command line: the run's config (data files prepared as in the run)
    and the checkpoint's path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ckpt", default=default_ckpt, choices=("best", "last"))
    args = parser.parse_args(argv)
    register_schemas()
    cfg = run_config(args.run_dir)
    factory.prepare_data_dir(cfg)  # data.root, classes and answers beside the shards, as in the run
    return cfg, args.run_dir / "checkpoints" / f"{args.ckpt}.ckpt"


def load_trained(cfg: Any, ckpt: Path) -> tuple[dict, Any, Any]:
    """(tasks, model in eval mode with the checkpoint's weights, datamodule set up for the test split) of a run."""
    from ofa.checkpoint import load_state_dict, read_checkpoint

    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    module.configure_model()
    load_state_dict(module.model, read_checkpoint(ckpt).state_dict)  # the run's .ckpt, allow-listed unpickling
    dm = factory.build_datamodule(cfg.data, tasks)
    dm.setup("test")
    return tasks, module.model.eval(), dm


def main(argv: list[str] | None = None) -> None:
    cfg, ckpt = load_run(argv, __doc__.split("\n")[0], "best")
    true, rolled = test_metrics(cfg, ckpt, False), test_metrics(cfg, ckpt, True)
    print(f"{'metric':<28} {'true images':>12} {'shuffled':>10}")
    for key in sorted(true):
        if not key.endswith("/loss"):
            print(f"{key:<28} {true[key]:>12.3f} {rolled.get(key, float('nan')):>10.3f}")


if __name__ == "__main__":
    main()
