"""Which claims does a trained MNLI / RTE run get right? Scores the run's test split and groups every
hypothesis of the synthetic world's text side by its kind (ofa/datamodules/synthetic_text.py `claim`).

    .venv/bin/python experiments/nli_probe.py outputs/<run_name>/<time> [--ckpt last|best]

Kinds: presence ("there is a red circle"), size ("the red circle is large"), location ("... is at the top
left"), relation ("... is to the left of ..."), undecidable ("... is made of wood", "... is heavy": maybe/no).
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shuffled_image_control import load_run, load_trained  # noqa: E402

KINDS = (("undecidable", r"made of|heavy|soft|expensive|wet"), ("relation", r"left of|right of|above|below"),
         ("location", r"is at the"), ("size", r"is (small|large)$"), ("presence", r"^there is"))


def kind(claim: str) -> str:
    return next(name for name, pattern in KINDS if re.search(pattern, claim))


def main(argv: list[str] | None = None) -> None:
    cfg, ckpt = load_run(argv, __doc__.split("\n")[0], "last")
    tasks, model, dm = load_trained(cfg, ckpt)
    (task,) = tasks.values()
    right, total = Counter(), Counter()
    with torch.no_grad():
        for batch in dm.test_dataloader()[0]:
            for pred, meta in zip(task.predict(model, batch), batch["meta"]):
                k = (kind(meta["text_b"]), meta["answer"])
                total[k] += 1
                right[k] += pred == meta["answer"]
    print(f"{ckpt} ({sum(total.values())} test pairs, accuracy {sum(right.values()) / sum(total.values()):.3f})")
    print("| claim | label | pairs | accuracy |\n|---|---|---|---|")
    for k in sorted(total):
        print(f"| {k[0]} | {k[1]} | {total[k]} | {right[k] / total[k]:.3f} |")


if __name__ == "__main__":
    main()
