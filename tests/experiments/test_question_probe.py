"""experiments/question_probe.py: the controlled questions are the world's own question types and true of their
scenes, and the tables count what they say."""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import question_probe  # noqa: E402
import task_breakdown  # noqa: E402

from ofa.datamodules import synthetic_world as world

TYPE_OF_KIND = {"shape": "shape", "colour": "colour", "exists yes": "exists", "exists no, same colour": "exists",
                "exists no, same shape": "exists", "exists no, neither": "exists", "count shape": "count shape"}


def named(question: str, pattern: str) -> str:
    return re.fullmatch(pattern, question).group(1)


def test_questions_are_the_worlds_types_and_true_of_their_scenes() -> None:
    items = question_probe.probe_items(random.Random(0), 80, side=64)
    assert {i.kind for i in items} == set(TYPE_OF_KIND)
    assert {i.objects for i in items} == {1, 2, 3}
    for item in items:
        assert task_breakdown.kind(item.question, task_breakdown.VQA_TYPES) == TYPE_OF_KIND[item.kind]
        assert item.answer in world.ANSWERS and item.objects == len(item.scene) and item.image.size == (64, 64)
        colours = [name.split()[0] for name in item.scene]
        shapes = [name.split()[1] for name in item.scene]
        if item.kind == "shape":
            colour = named(item.question, r"what shape is the (\w+) object\?")
            assert colours.count(colour) == 1 and shapes[colours.index(colour)] == item.answer
        elif item.kind == "colour":
            shape = named(item.question, r"what color is the (\w+)\?")
            assert shapes.count(shape) == 1 and colours[shapes.index(shape)] == item.answer
        elif item.kind == "count shape":
            shape = named(item.question, r"how many (\w+)s are there\?")
            assert item.answer == str(shapes.count(shape)) and item.detail == f"k={item.answer}"
        else:
            colour, shape = named(item.question, r"is there an? (\w+ \w+)\?").split()
            present = f"{colour} {shape}" in item.scene
            assert present == (item.answer == "yes") == (item.kind == "exists yes")
            if item.kind == "exists no, same colour":
                assert colour in colours
            if item.kind == "exists no, same shape":
                assert shape in shapes
            if item.kind == "exists no, neither":
                assert colour not in colours and shape not in shapes and item.detail == "-"


def rows(table: str) -> dict[str, list[str]]:
    """`kind | detail` (or the share row's label) -> its cells."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not set(cells[0]) <= set("-"):
            out[" | ".join(cells[:2]) if len(cells) == 6 else cells[0]] = cells[2:] if len(cells) == 6 else cells[1:]
    return out


def test_tables_score_predictions_per_object_count_and_the_share_of_yes() -> None:
    items = question_probe.probe_items(random.Random(2), 30, side=64)
    exact = rows(question_probe.tables(items, [i.answer for i in items]))
    scored = {k: v for k, v in exact.items() if " | " in k and k != "question | object"}  # the first table
    assert len(scored) >= 8
    for key, cells in scored.items():
        assert all(c == "-" or c.startswith("1.000") for c in cells), key
    always_yes = rows(question_probe.tables(items, ["yes"] * len(items)))
    assert always_yes["exists yes | small"][-1].startswith("1.000")
    assert always_yes["exists no, same shape | small"][-1].startswith("0.000")
    assert always_yes["share (questions)"] == [c for c in always_yes["share (questions)"] if c.startswith("1.000")]
    n_exists = sum(i.kind.startswith("exists") for i in items)
    assert sum(int(c.split("(")[1].rstrip(")")) for c in always_yes["share (questions)"]) == n_exists


def test_lookups_about_a_small_object_count_answers_for_the_large_one() -> None:
    items = question_probe.probe_items(random.Random(3), 60, side=64)
    attribute = {"colour": 0, "shape": 1}
    about_large = [i.scene[0].split()[attribute[i.kind]] if i.kind in attribute else i.answer for i in items]
    table = rows(question_probe.tables(items, about_large))
    assert table["colour"][1].startswith("1.000") and table["shape"][1].startswith("1.000")
    assert table["colour"][0].startswith("0.000") and table["colour"][2].startswith("0.000")
    right = rows(question_probe.tables(items, [i.answer for i in items]))
    assert right["shape"][0].startswith("1.000") and right["shape"][1].startswith("0.000")
