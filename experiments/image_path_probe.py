"""Does the image reach the decoder? Trains ofa_nano on image classification alone (64 px, synthetic world) and
prints, every 25 steps, how much the image path's activations differ between the images of a batch:

- `resnet rel-spread`: std over the batch / mean |x| of the ResNet's output features (B, 1024, h, w);
- `proj rel-spread`: the same for `image_proj(features)`, before the type embedding and the patch LayerNorm;
- `img-token spread`: std over the batch of the encoder's output at the image positions.
At the end: test accuracy (200 images, all-candidate scoring) with the true images and with each batch's images
rolled by one (a model that reads the image drops to about the majority rate).

    .venv/bin/python experiments/image_path_probe.py STEPS [hydra overrides ...]
    .venv/bin/python experiments/image_path_probe.py 200 optim=adamw optim.lr=1e-3      # the image path collapses
    .venv/bin/python experiments/image_path_probe.py 200 optim.lr=1e-3                   # adamw_scratch: it does not
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from ofa import factory  # noqa: E402
from ofa.schemas import register_schemas  # noqa: E402


class Probe(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx % 25:
            return
        m = pl_module.model
        with torch.no_grad():
            was = m.training
            m.eval()
            feat = m.encoder.embed_images(batch["patch_images"])  # (B, C, h, w)
            proj = m.encoder.image_proj(feat.flatten(2).transpose(1, 2))  # (B, P, D)
            enc = m.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
            m.train(was)
        rel = lambda x: x.std(0).mean().item() / (x.abs().mean().item() + 1e-9)  # noqa: E731
        tokens = enc.hidden[:, : proj.shape[1]]  # (B, P, D)
        print(f"step {trainer.global_step:4d}  loss {float(outputs['loss']):.3f}  resnet rel-spread {rel(feat):.3f}  "
              f"proj rel-spread {rel(proj):.3f}  img-token spread {tokens.std(0).mean().item():.3f}", flush=True)


def accuracy(task, model, loader, roll: bool) -> float:  # noqa: ANN001
    correct = total = 0
    for batch in loader:
        if roll:
            batch = {**batch, "patch_images": batch["patch_images"].roll(1, 0)}
        preds = task.predict(model, batch)
        correct += sum(p == m["answer"] for p, m in zip(preds, batch["meta"]))
        total += len(preds)
    return correct / total


def main() -> None:
    steps, overrides = int(sys.argv[1]), sys.argv[2:]
    register_schemas()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        task = [] if any(o.startswith("task=") for o in overrides) else ["task=image_classify"]  # or task=mixture
        cfg = compose("train", overrides=[*task, "task.image_size=64", "data.num_workers=0",
                                          f"paths.root_dir={ROOT}", "run_name=probe", "paths.output_dir=/tmp/probe",
                                          *overrides])
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    dm = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    start = time.time()
    pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
               enable_model_summary=False, limit_val_batches=0, callbacks=[Probe()], gradient_clip_val=1.0
               ).fit(module, datamodule=dm)
    task, model = tasks["image_classify"], module.model.eval()  # task=mixture: its classification test set
    loader = dm.test_dataloader()[dm.eval_task_names("test").index("image_classify")]
    print(f"{' '.join(overrides)}: {steps} steps, test acc {accuracy(task, model, loader, False):.3f}, "
          f"rolled images {accuracy(task, model, loader, True):.3f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
