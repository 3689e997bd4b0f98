"""Trivial baselines of the synthetic world's test split, scored with the platform's own metric classes.

Each baseline ignores the image: it predicts one constant learned from the training split (the most
frequent caption / answer / class / label, the mean box) or the whole image (grounding). Evaluation reads
annotation 0 of each test image, as the tasks do (`Task.pick`: evaluation uses the first element), and
caption references are all captions of the image with punctuation stripped, as `CaptionTask` does.
The text side (`text/<task>/`): GLUE tasks the majority training label; Gigaword the lead sentence of the
article; text infilling the masked input with its `<mask>` tokens dropped (the task's own evaluation masks).

    .venv/bin/python experiments/baselines.py                      # data/synthetic, test split
    .venv/bin/python experiments/baselines.py --split val --data-dir /path/to/synthetic
"""
from __future__ import annotations

import argparse
import glob
import json
import tarfile
from collections import Counter
from pathlib import Path

import torch

from ofa.tasks.glue import PROMPTS as GLUE_PROMPTS
from ofa.tasks.metrics import CaptionScores
from ofa.tasks.metrics_text import BinaryLabelMetrics, RougeF1
from ofa.tasks.metrics_understanding import ExactMatchAccuracy, GroundingAccuracy, VQASoftScore
from ofa.tasks.snli_ve import LABEL_WORDS
from ofa.tasks.text import strip_punctuation
from ofa.tasks.vqa import best_answer

ROOT = Path(__file__).resolve().parents[1]


def read_records(data_dir: Path, split: str) -> list[dict]:
    """The json record of every sample of `split` (shards `<split>-*.tar`), in shard order."""
    records = []
    for shard in sorted(glob.glob(str(data_dir / f"{split}-*.tar"))):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    records.append(json.loads(tar.extractfile(member).read()))
    if not records:
        raise FileNotFoundError(f"no {split}-*.tar shards in {data_dir} (run `python train.py` once to generate them)")
    return records


def most_common(items) -> str:
    return Counter(items).most_common(1)[0][0]


def baselines(data_dir: Path, split: str = "test", ptb: bool = True) -> list[tuple[str, str, str, float]]:
    """Rows (task, metric, baseline, value)."""
    train, test = read_records(data_dir, "train"), read_records(data_dir, split)
    rows = []

    # caption: the most frequent training caption (every phrasing counts: training samples one at random)
    caption = most_common(strip_punctuation(c) for r in train for c in r["captions"])
    scores = CaptionScores(meteor=False, ptb_tokenizer=ptb)
    scores.update([r["id"] for r in test], [caption] * len(test),
                  [[strip_punctuation(c) for c in r["captions"]] for r in test])
    for key, value in scores.compute().items():
        rows.append(("caption", key, f'always "{caption}"', float(value)))

    # VQA: the most frequent (best) training answer, scored with OFA's soft score on question 0
    answer = most_common(best_answer(q["answers"])[0] for r in train for q in r["vqa"])
    vqa = VQASoftScore()
    vqa.update([answer] * len(test), [r["vqa"][0]["answers"] for r in test])
    rows.append(("vqa", "score", f'always "{answer}"', float(vqa.compute())))

    # grounding: the mean training box, and the whole image, against ref 0 (original pixels)
    mean_box = torch.tensor([ref["box"] for r in train for ref in r["refs"]], dtype=torch.float64).mean(0)
    gt = torch.tensor([r["refs"][0]["box"] for r in test], dtype=torch.float64)
    for label, pred in (("mean training box " + str([round(v) for v in mean_box.tolist()]),
                         mean_box.expand(len(test), 4)),
                        ("whole image", torch.tensor([[0, 0, r["width"], r["height"]] for r in test],
                                                     dtype=torch.float64))):
        acc = GroundingAccuracy()
        acc.update(pred, gt)
        rows.append(("grounding", "acc", label, float(acc.compute())))

    # entailment: the majority training label, on hypothesis 0
    label = most_common(LABEL_WORDS[e["label"]] for r in train for e in r["entailment"])
    ent = ExactMatchAccuracy()
    ent.update([label] * len(test), [LABEL_WORDS[r["entailment"][0]["label"]] for r in test])
    rows.append(("snli_ve", "acc", f'always "{label}"', float(ent.compute())))

    # classification: the majority training class
    cls = most_common(r["label"] for r in train)
    clf = ExactMatchAccuracy()
    clf.update([cls] * len(test), [r["label"] for r in test])
    rows.append(("image_classify", "acc", f'always "{cls}"', float(clf.compute())))
    if (data_dir / "text").is_dir():
        rows += text_baselines(data_dir / "text", split)
    return rows


def text_baselines(text_dir: Path, split: str) -> list[tuple[str, str, str, float]]:
    """Majority label (GLUE), lead sentence (Gigaword), the masked input without masks (text infilling)."""
    from ofa.tasks.text_infill import TextInfillConfig, TextInfillTask
    from ofa.tokenizer import build_tokenizer

    rows = []
    for name, (_, answers) in GLUE_PROMPTS.items():
        train, test = read_records(text_dir / name, "train"), read_records(text_dir / name, split)
        label = most_common(r["label"] for r in train)
        if len(answers) == 2:
            metric = BinaryLabelMetrics(positive="positive" if "positive" in answers else "yes",
                                        keys=("acc", "mcc", "f1"))
            metric.update([label] * len(test), [r["label"] for r in test])
            rows += [(name, k, f'always "{label}"', float(v)) for k, v in metric.compute().items()]
        else:
            acc = ExactMatchAccuracy()
            acc.update([label] * len(test), [r["label"] for r in test])
            rows.append((name, "acc", f'always "{label}"', float(acc.compute())))
    test = read_records(text_dir / "gigaword", split)
    rouge = RougeF1(gigaword=True)
    rouge.update([r["text"].split(". ")[0] for r in test], [r["summary"] for r in test])
    rows += [("gigaword", k, "lead sentence", float(v)) for k, v in rouge.compute().items()]
    tokenizer = build_tokenizer("trained", text_dir / "text_infill")
    task = TextInfillTask(tokenizer, TextInfillConfig())
    samples = [task.preprocess(r, split) for r in read_records(text_dir / "text_infill", split)]
    copies = [tokenizer.decode([t for t in s.meta["masked"] if t != tokenizer.mask]).strip() for s in samples]
    refs = [s.meta["text"] for s in samples]
    exact, rouge = ExactMatchAccuracy(), RougeF1(gigaword=False)
    exact.update(copies, refs)
    rouge.update(copies, refs)
    rows.append(("text_infill", "exact", "copy the masked input", float(exact.compute())))
    rows += [("text_infill", k, "copy the masked input", float(v)) for k, v in rouge.compute().items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "synthetic"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--no-ptb", action="store_true", help="lower-case + split instead of the Java PTB tokenizer")
    args = parser.parse_args()
    rows = baselines(Path(args.data_dir), args.split, ptb=not args.no_ptb)
    print(f"| task | metric ({args.split}) | trivial baseline | value |\n|---|---|---|---|")
    for task, metric, label, value in rows:
        print(f"| {task} | {metric} | {label} | {value:.3f} |")


if __name__ == "__main__":
    main()
