"""`ofa-predict`: images (+ a text each) in, one JSON line of results per input out, through `ofa.api`.

    ofa-predict --checkpoint run/checkpoints/best.ckpt --task caption photos/ --out captions.jsonl
    ofa-predict --checkpoint ckpt_dir --task vqa --text "what colour is the car?" a.jpg b.jpg
    ofa-predict --checkpoint ckpt_dir --task grounding inputs.jsonl --draw boxes/ --gen beam_size=1
    ofa-predict --checkpoint ckpt_dir --task text_to_image --text "a red circle" --vqgan vq/ --draw out/

Inputs (any mix): a folder (its images, sorted; not recursive), image files, or `.jsonl` files whose lines
are `{"image": path, "text": ...}` (paths relative to the JSONL file; `text` = the question, phrase or
instruction of that image, else `--text`; text_to_image lines need only `text`). Results (to `--out` or
stdout): `{"input": i, "image": path, "text": ..., "task": ..., "answer": ...}`, `box` for grounding, `file`
for a picture written with `--draw DIR` (boxes drawn on the input, generated images). Decoding settings of the
task are overridden with `--gen KEY=VALUE` (fields of `GenerationConfig`).

Bad inputs: an image that cannot be read (missing, corrupt, not an image) is reported on stderr with its
name, skipped and counted; the exit status is 0 if at least one input gave a result, 1 if none did (every
input bad, or none given), 2 for a bad command line or checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TASKS = ("caption", "vqa", "grounding", "classify", "generate", "text_to_image")
NEEDS_TEXT = ("vqa", "grounding", "generate", "text_to_image")


@dataclass
class Item:
    """One input: an image path (None for text_to_image) and its text."""

    index: int
    image: Path | None
    text: str | None


def read_inputs(inputs: Sequence[str], text: str | None) -> list[Item]:
    """Folders, image files and JSONL files -> items in order (module docstring)."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            items += [Item(0, p, text) for p in files]
        elif path.suffix == ".jsonl":
            items += list(read_jsonl(path, text))
        else:
            items.append(Item(0, path, text))
    for i, item in enumerate(items):
        item.index = i
    return items


def read_jsonl(path: Path, text: str | None) -> Iterator[Item]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSONL file")
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from None
        image = row.get("image")
        yield Item(0, (path.parent / image) if image else None, row.get("text", text))


def parse_gen(pairs: Sequence[str]) -> dict[str, Any]:
    """`["beam_size=1", "max_len_b=8"]` -> `{"beam_size": 1, "max_len_b": 8}` (values read as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--gen {pair!r}: expected KEY=VALUE (a GenerationConfig field)")
        out[key.strip()] = yaml.safe_load(value)
    return out


class Predictor:
    """Runs one task of an `OFA` on batches of items and writes result rows (and pictures with --draw)."""

    def __init__(self, model: Any, args: argparse.Namespace) -> None:
        self.model, self.args = model, args
        self.gen = parse_gen(args.gen)
        self.labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
        self.draw = Path(args.draw) if args.draw else None
        if self.draw:
            self.draw.mkdir(parents=True, exist_ok=True)

    def answer(self, images: list, texts: list[str | None]) -> list[Any]:
        m, task, gen = self.model, self.args.task, self.gen
        if task == "caption":
            return m.caption(images, **gen)
        if task == "vqa":
            return m.vqa(images, texts, **gen)
        if task == "grounding":
            return m.ground(images, texts, **gen)
        if task == "classify":
            return m.classify(images, self.labels)
        if task == "generate":
            return m.generate(images, texts, **gen)
        return m.text_to_image(texts, vqgan=self.args.vqgan, samples=self.args.samples, scorer=self.args.scorer, **gen)

    def rows(self, items: list[Item], images: list) -> list[dict]:
        answers = self.answer(images, [i.text for i in items])
        rows = []
        for item, image, answer in zip(items, images, answers):
            row = {"input": item.index, "image": str(item.image) if item.image else None, "text": item.text,
                   "task": self.args.task}
            if self.args.task == "grounding":
                row["box"] = [round(c, 2) for c in answer]
                picture = self.drawn_box(image, answer, item.text)
            elif self.args.task == "text_to_image":
                picture = answer
            else:
                row["answer"], picture = answer, None
            if self.draw and picture is not None:
                name = f"{item.index:05d}-{item.image.stem if item.image else 'generated'}.png"
                picture.save(self.draw / name)
                row["file"] = str(self.draw / name)
            rows.append(row)
        return rows

    def drawn_box(self, image: Any, box: list[float], text: str | None) -> Any:
        from ofa.api.images import draw_boxes

        return draw_boxes(image, [box], [text or ""]) if self.draw else None


def load_images(items: list[Item], errors: TextIO, task: str) -> tuple[list[Item], list]:
    """Open each item's image; an unreadable one is named on `errors` and left out (text_to_image and
    generate take items without an image)."""
    from ofa.api.images import to_image

    kept, images = [], []
    for item in items:
        if item.image is None:
            if task not in ("text_to_image", "generate"):
                tqdm.write(f"ofa-predict: skipped input {item.index}: no image", file=errors)
                continue
            kept.append(item)
            images.append(None)
            continue
        try:
            images.append(to_image(item.image))
            kept.append(item)
        except (OSError, ValueError) as err:  # missing, corrupt or not an image (PIL raises OSError subclasses)
            tqdm.write(f"ofa-predict: skipped {item.image}: {type(err).__name__}: {err}", file=errors)
    return kept, images


def run(args: argparse.Namespace, out: TextIO, errors: TextIO) -> tuple[int, int]:
    """Predict every item; `(results written, inputs skipped)`."""
    import ofa
    from ofa.safe_load import CheckpointError

    items = read_inputs(args.inputs, args.text)
    if not args.inputs and args.task == "text_to_image" and args.text:
        items = [Item(0, None, args.text)]  # a prompt alone is the one input
    if args.task == "text_to_image" and not args.draw:
        raise ValueError("--task text_to_image writes images: give --draw DIR")
    missing_text = [i for i in items if args.task in NEEDS_TEXT and not i.text]
    if missing_text:
        raise ValueError(f"--task {args.task} needs a text per input (--text or a JSONL 'text'); "
                         f"input {missing_text[0].index} ({missing_text[0].image}) has none")
    try:
        model = ofa.from_pretrained(args.checkpoint, tokenizer=args.tokenizer, ema=args.ema, device=args.device,
                                    image_size=args.image_size, batch_size=args.batch_size)
    except (CheckpointError, FileNotFoundError) as err:
        raise ValueError(str(err)) from None
    predictor, done, skipped = Predictor(model, args), 0, 0
    with tqdm(total=len(items), desc=f"ofa-predict {args.task}", unit="input", file=errors,
              disable=args.quiet) as bar:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start:start + args.batch_size]
            kept, images = load_images(chunk, errors, args.task)
            skipped += len(chunk) - len(kept)
            if kept:
                for row in predictor.rows(kept, images):
                    out.write(json.dumps(row) + "\n")
                out.flush()
                done += len(kept)
            bar.update(len(chunk))
    return done, skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-predict", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 some results, 1 no input could be processed, 2 bad usage.")
    parser.add_argument("inputs", nargs="*", help="image folders, image files, .jsonl files")
    parser.add_argument("--checkpoint", required=True, help="platform folder, run .ckpt, fairseq .pt, HF-port folder")
    parser.add_argument("--task", choices=TASKS, default="caption")
    parser.add_argument("--text", help="the question / phrase / instruction / prompt of every input")
    parser.add_argument("--labels", help="classify: comma-separated class names (default: the checkpoint's)")
    parser.add_argument("--gen", action="append", default=[], metavar="KEY=VALUE",
                        help="decoding override, e.g. --gen beam_size=1 --gen max_len_b=8 (repeatable)")
    parser.add_argument("--out", help="JSONL file of results (default: stdout)")
    parser.add_argument("--draw", metavar="DIR", help="save pictures: boxes drawn on the inputs, generated images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, help="square input size of the image tasks (default: the checkpoint's)")
    parser.add_argument("--tokenizer", help="vocabulary of a checkpoint without one (OFA's BPE folder, tokenizer.json)")
    parser.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--vqgan", help="text_to_image: the VQGAN folder (model.yaml + last.ckpt)")
    parser.add_argument("--samples", type=int, default=4, help="text_to_image: images sampled per prompt")
    parser.add_argument("--scorer", help="text_to_image reranker: synthetic:DIR or open_clip:MODEL:WEIGHTS")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        done, skipped = run(args, out, sys.stderr)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ofa-predict: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.out:
            out.close()
    print(f"ofa-predict: {done} result(s), {skipped} input(s) skipped" + (f" -> {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
