"""Does the user surface give a trained run's answers? Loads a run's checkpoint with `ofa.from_pretrained`, asks
every high-level call about the synthetic world's test images, scores the answers against the ground truth and
puts them beside the test metrics `train.py` wrote for the same checkpoint (metrics.json); then `ofa-predict` on
a folder (caption, classify) and JSONL files (vqa, grounding) of the same images must agree with the API.

    .venv/bin/python experiments/api_sensible.py RUN_DIR [--ckpt best|last] [--n 200] [--data data/synthetic]

The test metrics score each image's first question / first referring expression and every caption reference, as
the tasks' evaluation does (`Task.pick`: evaluation takes the first); so does this script.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import ofa
from ofa.datamodules.shards import read_shard
from ofa.tasks.metrics_understanding import grounding_hits

CAPTION_PROMPT = " what does the image describe?"


def read_split(data_dir: Path, split: str, n: int) -> list[tuple[dict, bytes]]:
    """(record, jpeg bytes) of the split's first `n` samples, in shard order."""
    raws = (raw for shard in sorted(data_dir.glob(f"{split}-*.tar")) for raw in read_shard(str(shard), None))
    return [(json.loads(raw["json"]), raw["jpg"]) for raw in itertools.islice(raws, n)]


def score(model: ofa.OFA, rows: list[tuple[dict, bytes]]) -> tuple[dict, dict]:
    """Agreement with the ground truth per call, and the answers (for the ofa-predict comparison)."""
    images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for _, jpeg in rows]
    recs = [r for r, _ in rows]
    timed, answers = {}, {}

    def ask(name, fn, *args, **kwargs):
        start = time.perf_counter()
        answers[name] = fn(*args, **kwargs)
        timed[name] = time.perf_counter() - start
        return answers[name]

    captions = ask("caption", model.caption, images)
    vqa = ask("vqa", model.vqa, images, [r["vqa"][0]["question"] for r in recs])
    boxes = ask("ground", model.ground, images, [r["refs"][0]["text"] for r in recs])
    classes = ask("classify", model.classify, images)
    generated = ask("generate", model.generate, images, CAPTION_PROMPT)

    caption_metrics = model.task("caption").build_metrics()["coco"]
    caption_metrics.update([r["id"] for r in recs], captions, [r["captions"] for r in recs])
    cider = {k: float(v) for k, v in caption_metrics.compute().items()}
    hits = grounding_hits(torch.tensor(boxes), torch.tensor([r["refs"][0]["box"] for r in recs], dtype=torch.float))
    n = len(recs)
    best = [max(r["vqa"][0]["answers"].items(), key=lambda kv: kv[1])[0] for r in recs]
    table = {
        "caption: names the large object ('<colour> <shape>')": sum(r["label"] in c for r, c in zip(recs, captions)) / n,
        "caption: CIDEr-D": cider["cider"],
        "vqa: soft score (first question)": sum(r["vqa"][0]["answers"].get(a, 0.0) for r, a in zip(recs, vqa)) / n,
        "vqa: exact (the most confident answer)": sum(a == b for a, b in zip(vqa, best)) / n,
        "ground: Acc@0.5, boxes in pixels": float(hits.float().mean()),
        "classify: accuracy": sum(r["label"] == c for r, c in zip(recs, classes)) / n,
        "classify: colour / shape": (sum(r["label"].split()[0] == c.split()[0] for r, c in zip(recs, classes)) / n,
                                     sum(r["label"].split()[1] == c.split()[1] for r, c in zip(recs, classes)) / n),
        "generate (caption prompt) = caption": sum(g.strip(" .") == c for g, c in zip(generated, captions)) / n,
    }
    return table, {"answers": answers, "seconds": timed}


def predict_rows(ckpt: Path, task: str, inputs: Path, out: Path) -> list[dict]:
    """`ofa-predict` as a user runs it (a subprocess of this Python), its JSON lines in input order."""
    cmd = [sys.executable, "-m", "ofa.predict", "--quiet", "--checkpoint", str(ckpt), "--task", task, str(inputs),
           "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=1800)
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def compare_predict(ckpt: Path, rows: list[tuple[dict, bytes]], answers: dict, work: Path) -> dict:
    """ofa-predict on a folder (caption, classify) and on JSONL files (vqa, grounding): rows equal to the API's."""
    folder = work / "images"
    folder.mkdir()
    for record, jpeg in rows:
        (folder / f"{record['id']}.jpg").write_bytes(jpeg)  # ids sort in shard order
    texts = {"vqa": [r["vqa"][0]["question"] for r, _ in rows], "grounding": [r["refs"][0]["text"] for r, _ in rows]}
    agree = {}
    for task, api in (("caption", "caption"), ("classify", "classify"), ("vqa", "vqa"), ("grounding", "ground")):
        inputs = folder
        if task in texts:
            inputs = work / f"{task}.jsonl"
            inputs.write_text("".join(json.dumps({"image": f"images/{r['id']}.jpg", "text": t}) + "\n"
                                      for (r, _), t in zip(rows, texts[task])))
        got = predict_rows(ckpt, task, inputs, work / f"{task}.out.jsonl")
        if task == "grounding":  # ofa-predict writes boxes to 2 decimals
            same = sum(g["box"] == [round(c, 2) for c in a] for g, a in zip(got, answers[api]))
        else:
            same = sum(g["answer"] == a for g, a in zip(got, answers[api]))
        agree[f"ofa-predict --task {task} = API"] = f"{same}/{len(rows)} ({len(got)} rows)"
    return agree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ckpt", default="best", help="best | last (checkpoints/<name>.ckpt of the run)")
    parser.add_argument("--n", type=int, default=200, help="test images (the test metrics score all 200)")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--no-predict", action="store_true", help="skip the ofa-predict comparison")
    args = parser.parse_args(argv)
    ckpt = args.run_dir / "checkpoints" / f"{args.ckpt}.ckpt"
    model = ofa.from_pretrained(ckpt, device="cpu")
    rows = read_split(args.data, "test", args.n)
    table, got = score(model, rows)
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    train_side = {"caption: CIDEr-D": "test/caption/cider", "vqa: soft score (first question)": "test/vqa/score",
                  "ground: Acc@0.5, boxes in pixels": "test/grounding/acc", "classify: accuracy": "test/image_classify/acc"}
    print(f"{ckpt}, {len(rows)} test images\n\n| call: measure | API | train.py test metric |\n|---|---|---|")
    for name, value in table.items():
        shown = " / ".join(f"{v:.3f}" for v in value) if isinstance(value, tuple) else f"{value:.3f}"
        ref = metrics.get(train_side.get(name, ""), None)
        print(f"| {name} | {shown} | {'' if ref is None else f'{ref:.3f}'} |")
    print("\nseconds per call (all images):", {k: round(v, 1) for k, v in got["seconds"].items()})
    if not args.no_predict:
        with tempfile.TemporaryDirectory() as work:
            for name, value in compare_predict(ckpt, rows, got["answers"], Path(work)).items():
                print(f"{name}: {value}")
    samples = [(r["label"], c) for (r, _), c in zip(rows[:5], got["answers"]["caption"])]
    print("\nfirst captions (label, caption):", samples)


if __name__ == "__main__":
    main()
