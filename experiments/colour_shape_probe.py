"""What does a trained run's classifier read: colour, shape or both? Scores the image_classify test split of a
run (its last checkpoint) and splits each predicted class name ("<colour> <shape>", synthetic world) into its
two words.

    .venv/bin/python experiments/colour_shape_probe.py outputs/<run_name>/<time> [--ckpt last|best]

Prints accuracy, colour accuracy and shape accuracy (6 colours x 3 shapes: a model that reads only the colour
scores 1.0 / ~0.33 / ~0.33).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shuffled_image_control import load_run, load_trained  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg, ckpt = load_run(argv, __doc__.split("\n")[0], "last")
    tasks, model, dm = load_trained(cfg, ckpt)
    loader = dm.test_dataloader()[dm.eval_task_names("test").index("image_classify")]
    task = tasks["image_classify"]
    total = exact = colour = shape = 0
    with torch.no_grad():
        for batch in loader:
            for pred, meta in zip(task.predict(model, batch), batch["meta"]):
                truth = meta["answer"]
                total += 1
                exact += pred == truth
                colour += pred.split()[0] == truth.split()[0]
                shape += pred.split()[-1] == truth.split()[-1]
    print(f"{ckpt}: accuracy {exact / total:.3f}, colour {colour / total:.3f}, shape {shape / total:.3f} "
          f"({total} test images)")


if __name__ == "__main__":
    main()
