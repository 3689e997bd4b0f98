"""Does a trained run match the words of a VQA question to the image? Asks its checkpoint controlled questions about
fresh synthetic scenes (ofa/datamodules/synthetic_world.py) and splits the accuracy by the number of objects in the
scene and the size of the object the answer depends on.

    .venv/bin/python experiments/question_probe.py outputs/<run_name>/<time> [--ckpt best|last] [--scenes 150]

Per object of each scene: "what shape is the <colour> object?" and "what color is the <shape>?" (where the phrase
names one object: a lookup), "is there a <its name>?" (yes), "is there a <its colour> <other shape>?" and "is there a
<other colour> <its shape>?" (no, where absent: a check); per scene, "is there a <colour> <shape>?" with neither the
colour nor the shape in the scene (no, where three shapes leave one out); per shape, "how many <shape>s are there?". A
model that checks even one of the two words answers the last "no" more often than the checks; a model that
checks the question against the image answers the checks alike for one, two and three objects; one that answers
from the scene's statistics does not (the second table: how often it says "yes" to "is there ...?" by object count,
where the truth is 50%). The third: which object a lookup about a small object answers for, where the scene's large
object differs in that attribute (the asked one, the large one, or neither).
"""
from __future__ import annotations

import argparse
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ofa.datamodules import synthetic_world as world


@dataclass
class Item:
    kind: str  # shape | colour | exists yes | exists no, same colour | exists no, same shape | exists no, neither
    #           | count shape
    detail: str  # the size of the object asked about ("small" / "large"), "k=<true count>" for counting, "-" else
    objects: int  # objects in the scene
    scene: tuple[str, ...]  # the names of its objects ("red circle", ...), the large one first
    image: Image.Image
    question: str
    answer: str


def probe_items(rng: random.Random, scenes: int, side: int = 256) -> list[Item]:
    items: list[Item] = []
    for _ in range(scenes):
        objs = world.sample_scene(rng, side)
        image = world.render(objs, rng.choice(world.BACKGROUNDS), side)
        n, present = len(objs), {o.name for o in objs}
        scene = tuple(o.name for o in sorted(objs, key=lambda o: o.size != "large"))

        def add(kind: str, detail: str, question: str, answer: str) -> None:
            items.append(Item(kind, detail, n, scene, image, question, answer))

        for o in objs:
            if sum(x.color == o.color for x in objs) == 1:
                add("shape", o.size, f"what shape is the {o.color} object?", o.shape)
            if sum(x.shape == o.shape for x in objs) == 1:
                add("colour", o.size, f"what color is the {o.shape}?", o.color)
            add("exists yes", o.size, f"is there {world.a(o.name)}?", "yes")
            same_colour = [f"{o.color} {s}" for s in world.SHAPES if f"{o.color} {s}" not in present]
            same_shape = [f"{c} {o.shape}" for c in world.COLORS if f"{c} {o.shape}" not in present]
            if same_colour:
                add("exists no, same colour", o.size, f"is there {world.a(rng.choice(same_colour))}?", "no")
            if same_shape:
                add("exists no, same shape", o.size, f"is there {world.a(rng.choice(same_shape))}?", "no")
        colours = [c for c in world.COLORS if all(o.color != c for o in objs)]
        shapes = [s for s in world.SHAPES if all(o.shape != s for o in objs)]
        if shapes:  # chosen by position, not drawn: the other items stay those of earlier runs with the same seed
            name = f"{colours[len(items) % len(colours)]} {shapes[len(items) % len(shapes)]}"
            add("exists no, neither", "-", f"is there {world.a(name)}?", "no")
        for shape in world.SHAPES:
            k = sum(o.shape == shape for o in objs)
            add("count shape", f"k={k}", f"how many {shape}s are there?", str(k))
    return items


def tables(items: list[Item], predictions: list[str]) -> str:
    """Markdown: accuracy per (kind, detail) and object count; P(yes) for the existence questions by count; which
    object the lookups about a small object were answered for."""
    right: dict[tuple[str, str], dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    yes: dict[int, list[bool]] = defaultdict(list)
    for item, pred in zip(items, predictions, strict=True):
        right[item.kind, item.detail][item.objects].append(pred == item.answer)
        if item.kind.startswith("exists"):
            yes[item.objects].append(pred == "yes")

    def cell(vals: list[bool]) -> str:
        return f"{sum(vals) / len(vals):.3f} ({len(vals)})" if vals else "-"

    lines = ["| question | object | 1 object | 2 objects | 3 objects | all |", "|---|---|---|---|---|---|"]
    for (kind, detail), by_n in sorted(right.items()):
        lines.append(f"| {kind} | {detail} | " + " | ".join(cell(by_n.get(n, [])) for n in (1, 2, 3))
                     + f" | {cell([v for vals in by_n.values() for v in vals])} |")
    lines += ["", "| \"is there ...?\" answered yes | 1 object | 2 objects | 3 objects |", "|---|---|---|---|",
              "| share (questions) | " + " | ".join(cell(yes.get(n, [])) for n in (1, 2, 3)) + " |"]
    lines += ["", "| lookup of a small object among 2-3 | the asked object's | the large object's | another |",
              "|---|---|---|---|"]
    for kind, index in (("colour", 0), ("shape", 1)):
        small = [(item, pred) for item, pred in zip(items, predictions)
                 if item.kind == kind and item.detail == "small" and item.objects > 1
                 and item.scene[0].split()[index] != item.answer]  # the large object differs in the attribute
        large = [pred == item.scene[0].split()[index] for item, pred in small]
        asked = [pred == item.answer for item, pred in small]
        other = [not (x or y) for x, y in zip(asked, large)]
        lines.append(f"| {kind} | {cell(asked)} | {cell(large)} | {cell(other)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from ofa.api import from_pretrained

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ckpt", default="best", choices=("best", "last"))
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    ckpt = args.run_dir / "checkpoints" / f"{args.ckpt}.ckpt"
    model = from_pretrained(ckpt, device="cpu", batch_size=32)  # the run's task settings: image size, answers
    items = probe_items(random.Random(args.seed), args.scenes)
    predictions = model.vqa([i.image for i in items], [i.question for i in items])
    print(f"{ckpt}: {len(items)} questions on {args.scenes} scenes (seed {args.seed})\n")
    print(tables(items, predictions))


if __name__ == "__main__":
    main()
