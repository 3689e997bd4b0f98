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
from shuffled_image_control import ROOT, load_run  # noqa: E402

sys.path.insert(0, str(ROOT))
from ofa import factory  # noqa: E402
from ofa.checkpoint import load_state_dict, read_checkpoint  # noqa: E402

KINDS = (("undecidable", r"made of|heavy|soft|expensive|wet"), ("relation", r"left of|right of|above|below"),
         ("location", r"is at the"), ("size", r"is (small|large)$"), ("presence", r"^there is"))


def kind(claim: str) -> str:
    return next(name for name, pattern in KINDS if re.search(pattern, claim))


def main(argv: list[str] | None = None) -> None:
    cfg, ckpt = load_run(argv, __doc__.split("\n")[0], "last")
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    module.configure_model()
    load_state_dict(module.model, read_checkpoint(ckpt).state_dict)
    dm = factory.build_datamodule(cfg.data, tasks)
    dm.setup("test")
    (name,) = tasks
    task, model = tasks[name], module.model.eval()
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
