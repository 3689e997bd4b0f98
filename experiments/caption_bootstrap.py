"""Caption checkpoints on one test split: per-image CIDEr-D and a paired bootstrap of their differences.

    python experiments/caption_bootstrap.py --shards '/tmp/h16/world/test-*.tar' --out /tmp/h16/eval \
        base=/tmp/h16/ce_base/checkpoints/best.ckpt scst=... ce_more=...

Each checkpoint captions every image of the shards (the run's own caption settings, read by `ofa.from_pretrained`
from its Hydra config: image size, beam 5), its predictions are written to `<out>/<label>.jsonl` (re-scored, not
re-decoded, when the file exists), and each is scored with the platform's metric (pycocoevalcap's CIDEr, PTB
tokenizer, document frequencies of the whole split's references). The mean of the per-image scores is the corpus
score the runs log. The bootstrap resamples images with replacement (the document frequencies stay those of the
whole split) and reports a 95% interval of each score and of each checkpoint's difference to the first one, paired:
the same resampled images for every checkpoint. The summary goes to stdout and `<out>/summary.json`.
"""
from __future__ import annotations

import argparse
import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

BATCH = 50


def read_split(patterns: Sequence[str]) -> Iterator[dict]:
    """Decoded samples (json record + PIL `image`) of the shards, in shard order."""
    from ofa.datamodules.shards import decode_sample, read_shard

    for url in sorted(f for p in patterns for f in glob.glob(p)):
        for raw in read_shard(url, None):
            yield decode_sample(raw, 1 << 26)


def caption_split(checkpoint: str, patterns: Sequence[str]) -> list[dict]:
    """`{"id", "prediction", "references"}` per image: beam search as in the run's test stage."""
    from ofa.api import from_pretrained
    from ofa.datamodules.collate import collate

    ofa = from_pretrained(checkpoint, device="cpu")
    task = ofa.task("caption")
    rows: list[dict] = []
    samples = [s for s in (task.preprocess(r, "test") for r in read_split(patterns)) if s is not None]
    for start in range(0, len(samples), BATCH):
        batch = collate(samples[start:start + BATCH], ofa.tokenizer.pad)
        with torch.no_grad():
            rows += task.evaluate(ofa.model, batch, {})
    return rows


def per_image_cider(rows: Sequence[dict]) -> np.ndarray:
    """CIDEr of each row against its references (document frequencies of all rows' references)."""
    from pycocoevalcap.cider.cider import Cider

    from ofa.tasks.metrics import tokenize_captions

    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("caption_bootstrap: duplicate ids in the predictions")
    res = tokenize_captions({i: [r["prediction"]] for i, r in zip(ids, rows, strict=True)}, True)
    gts = tokenize_captions({i: list(r["references"]) for i, r in zip(ids, rows, strict=True)}, True)
    _, scores = Cider().compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
    return np.asarray(scores, dtype=np.float64)  # in the order of `ids`


def paired_bootstrap(scores: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Mean and 95% percentile interval of each label's score and of its difference to the first label, over
    `resamples` resamplings of the images (the same indices for every label)."""
    labels = list(scores)
    n = len(scores[labels[0]])
    if any(len(s) != n for s in scores.values()):
        raise ValueError("caption_bootstrap: the checkpoints scored different numbers of images")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = {k: s[idx].mean(axis=1) for k, s in scores.items()}  # (resamples,) per label
    out = {}
    for k in labels:
        diff = means[k] - means[labels[0]]
        out[k] = {"score": float(scores[k].mean()), "ci95": np.percentile(means[k], [2.5, 97.5]).tolist(),
                  "diff": float(scores[k].mean() - scores[labels[0]].mean()),
                  "diff_ci95": np.percentile(diff, [2.5, 97.5]).tolist(), "p_not_above": float((diff <= 0).mean())}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="LABEL=PATH, the first is the reference of the differences")
    parser.add_argument("--shards", nargs="+", required=True, help="test shard glob(s), quoted")
    parser.add_argument("--out", required=True, help="folder for <label>.jsonl and summary.json")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = {}
    for spec in args.checkpoints:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            parser.error(f"checkpoint {spec!r} is not LABEL=PATH")
        file = out / f"{label}.jsonl"
        if not file.is_file():
            rows = caption_split(path, args.shards)
            file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        rows = sorted((json.loads(line) for line in file.read_text("utf-8").splitlines()), key=lambda r: str(r["id"]))
        scores[label] = per_image_cider(rows)
    summary = paired_bootstrap(scores, args.resamples, args.seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for label, s in summary.items():
        print(f"{label}: CIDEr-D {s['score']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
              f"vs {next(iter(summary))}: {s['diff']:+.3f} [{s['diff_ci95'][0]:+.3f}, {s['diff_ci95'][1]:+.3f}]")
    return summary


if __name__ == "__main__":
    main()
