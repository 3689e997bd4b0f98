"""A small synthetic world: 1-3 coloured shapes on a plain background, and every annotation OFA's tasks read.

Objects sit in distinct cells of a 3x3 grid (no overlaps), so relative positions and locations are exact.
With two or more objects exactly one is large, which makes the class label (the large object's
"<colour> <shape>") well defined. Texts come from a tiny grammar and answers from small closed sets, so a
tiny model learns every task in minutes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220),
          "yellow": (240, 215, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.07, "large": 0.13}  # half extent, as a fraction of the image side
BACKGROUNDS = ((255, 255, 255), (232, 232, 232), (250, 245, 230))
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBERS = ("zero", "one", "two", "three")
MATERIALS = ("wood", "metal", "paper", "glass")
PROPERTIES = ("heavy", "soft", "expensive", "wet")
CONFUSABLE = {"red": "orange", "orange": "yellow", "yellow": "orange", "blue": "purple",
              "purple": "blue", "green": "yellow"}


def location_name(row: int, col: int) -> str:
    """`top left` ... `bottom right`; the middle cell is `center`."""
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


LOCATIONS = [location_name(r, c) for r in range(3) for c in range(3)]
ANSWERS = list(COLORS) + list(SHAPES) + [str(n) for n in range(4)] + ["yes", "no"] + list(SIZES) + LOCATIONS
CLASSES = [f"{c} {s}" for c in COLORS for s in SHAPES]


@dataclass
class Obj:
    color: str
    shape: str
    size: str
    cell: tuple[int, int]  # (row, col)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def location(self) -> str:
        return location_name(*self.cell)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def a(phrase: str) -> str:
    """`a red circle`, `an orange square`."""
    return f"{article(phrase)} {phrase}"


def sample_scene(rng: random.Random, image_size: int) -> list[Obj]:
    """1-3 objects with distinct (colour, shape), distinct grid cells, exactly one large if several."""
    n = rng.randint(1, 3)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n)
    sizes = [rng.choice(list(SIZES))] if n == 1 else ["small"] * n
    if n > 1:
        sizes[rng.randrange(n)] = "large"
    return [_place(rng, color, shape, size, cell, image_size)
            for (color, shape), size, cell in zip(kinds, sizes, cells)]


def _place(rng: random.Random, color: str, shape: str, size: str, cell: tuple[int, int], side: int) -> Obj:
    cell_w = side / 3
    half = max(2, round(SIZES[size] * side))
    slack = max(0.0, cell_w / 2 - half - 0.02 * side)
    cx = round((cell[1] + 0.5) * cell_w + rng.uniform(-slack, slack))
    cy = round((cell[0] + 0.5) * cell_w + rng.uniform(-slack, slack))
    return Obj(color, shape, size, cell, (cx - half, cy - half, cx + half, cy + half))


def render(objects: list[Obj], background: tuple[int, int, int], image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for o in objects:
        x0, y0, x1, y1 = o.box
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def relation(a_: Obj, b: Obj) -> list[str]:
    """Every relation phrase true for `a_` relative to `b` (grid cells decide)."""
    out = []
    if a_.cell[1] != b.cell[1]:
        out.append("to the left of" if a_.cell[1] < b.cell[1] else "to the right of")
    if a_.cell[0] != b.cell[0]:
        out.append("above" if a_.cell[0] < b.cell[0] else "below")
    return out


# ---- annotations ---------------------------------------------------------------------------------
def captions(rng: random.Random, objs: list[Obj]) -> list[str]:
    """Several phrasings; the first is the canonical one."""
    names = [a(o.name) for o in objs]
    sized = [a(f"{o.size} {o.name}") for o in objs]
    if len(objs) == 1:
        o = objs[0]
        return [names[0], sized[0], f"{names[0]} at the {o.location}", f"there is {names[0]}"]
    listed = join_phrases(names)
    rel = f"{names[0]} {rng.choice(relation(objs[0], objs[1]))} {names[1]}"
    if len(objs) == 3:
        rel += f" and {names[2]}"
    return [rel, listed, join_phrases(sized), f"{NUMBERS[len(objs)]} shapes: {listed}"]


def join_phrases(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def vqa(rng: random.Random, objs: list[Obj]) -> list[dict]:
    """Questions about colour, shape, count, existence, size, location and relative position."""
    qs = [("how many shapes are there?", str(len(objs)))]
    shape = rng.choice(SHAPES)
    qs.append((f"how many {shape}s are there?", str(sum(o.shape == shape for o in objs))))
    o = rng.choice(objs)
    if sum(x.shape == o.shape for x in objs) == 1:
        qs.append((f"what color is the {o.shape}?", o.color))
    if sum(x.color == o.color for x in objs) == 1:
        qs.append((f"what shape is the {o.color} object?", o.shape))
    qs.append((f"is the {o.name} small or large?", o.size))
    qs.append((f"where is the {o.name}?", o.location))
    qs.append(_existence_question(rng, objs))
    if len(objs) > 1:
        qs.append(_relation_question(rng, objs))
    rng.shuffle(qs)
    return [{"question": q, "answers": _soft_answers(rng, ans)} for q, ans in qs]


def _existence_question(rng: random.Random, objs: list[Obj]) -> tuple[str, str]:
    present = {o.name for o in objs}
    if rng.random() < 0.5:
        return f"is there {a(rng.choice(sorted(present)))}?", "yes"
    return f"is there {a(rng.choice([c for c in CLASSES if c not in present]))}?", "no"


def _relation_question(rng: random.Random, objs: list[Obj]) -> tuple[str, str]:
    x, y = rng.sample(objs, 2)
    rel = rng.choice(RELATIONS)
    return f"is the {x.name} {rel} the {y.name}?", "yes" if rel in relation(x, y) else "no"


def _soft_answers(rng: random.Random, answer: str) -> dict[str, float]:
    """Mostly one answer with confidence 1.0; now and then a confusable colour at 0.3 (VQA soft scores)."""
    if answer in CONFUSABLE and rng.random() < 0.15:
        return {answer: 1.0, CONFUSABLE[answer]: 0.3}
    return {answer: 1.0}


def refs(rng: random.Random, objs: list[Obj]) -> list[dict]:
    """One referring expression per object (a phrasing that identifies it uniquely) with its box."""
    out = []
    for o in objs:
        options = [f"the {o.name}", f"the {o.size} {o.name}", f"the {o.name} at the {o.location}"]
        if sum(x.shape == o.shape for x in objs) == 1:
            options.append(f"the {o.shape}")
        if sum(x.color == o.color for x in objs) == 1:
            options.append(f"the {o.color} object")
        if sum(x.size == o.size for x in objs) == 1 and len(objs) > 1:
            options.append(f"the {o.size} shape")
        out.append({"text": rng.choice(options), "box": list(o.box)})
    rng.shuffle(out)
    return out


def entailment(rng: random.Random, objs: list[Obj], premise: str) -> list[dict]:
    """Hypotheses that the image makes true (yes), false (no) or leaves open (maybe)."""
    o = rng.choice(objs)
    absent = rng.choice([c for c in CLASSES if c not in {x.name for x in objs}])
    wrong = rng.choice([n for n in (1, 2, 3) if n != len(objs)])
    items = [(f"there is {a(o.name)}", "yes"), (f"there is {a(absent)}", "no"),
             (f"there {_are(len(objs))} {NUMBERS[len(objs)]} {_shapes(len(objs))}", "yes"),
             (f"there {_are(wrong)} {NUMBERS[wrong]} {_shapes(wrong)}", "no"),
             (f"the {o.name} is made of {rng.choice(MATERIALS)}", "maybe"),
             (f"the {o.name} is {rng.choice(PROPERTIES)}", "maybe")]
    if len(objs) > 1:
        x, y = rng.sample(objs, 2)
        rel = rng.choice(RELATIONS)
        items.append((f"the {x.name} is {rel} the {y.name}", "yes" if rel in relation(x, y) else "no"))
    rng.shuffle(items)
    return [{"hypothesis": h, "premise": premise, "label": label} for h, label in items]


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def _shapes(n: int) -> str:
    return "shape" if n == 1 else "shapes"


def annotate(rng: random.Random, objs: list[Obj]) -> dict:
    """All shard-schema fields of one image except id/width/height."""
    caps = captions(rng, objs)
    main = max(objs, key=lambda o: SIZES[o.size])
    return {"captions": caps, "vqa": vqa(rng, objs), "refs": refs(rng, objs),
            "entailment": entailment(rng, objs, rng.choice(caps)), "label": main.name,
            "objects": [{"color": o.color, "shape": o.shape, "size": o.size, "box": list(o.box)} for o in objs]}


def render_single_object(rng: random.Random, image_size: int) -> tuple[Image.Image, dict, str]:
    """One object of random colour, shape, size and grid cell on a random background (text-to-image data).

    Returns (image, attributes, caption): attributes = {color, shape, size, cell: [row, col], box}, caption
    e.g. `a large red circle at the top left`.
    """
    color, shape, size = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(SIZES))
    cell = (rng.randrange(3), rng.randrange(3))
    obj = _place(rng, color, shape, size, cell, image_size)
    image = render([obj], rng.choice(BACKGROUNDS), image_size)
    attributes = {"color": color, "shape": shape, "size": size, "cell": list(cell), "box": list(obj.box)}
    return image, attributes, f"{a(f'{size} {color} {shape}')} at the {obj.location}"
