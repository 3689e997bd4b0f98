"""OFA's TSV files (spec §3): one layout per task, read line by line like OFA's `FileDataset`.

Each layout names the file's columns (`file_columns`), the fields its parser takes in the order of
OFA's `--selected-cols` (`fields`) and OFA's default selection (`selected`), so `--columns` takes the
same value as OFA's `selected_cols` (stage-2 caption files: `--columns 1,4,2`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ofa.datamodules.formats.common import (
    BAD_FIELD,
    MISSING_FIELD,
    SNLI_LABELS,
    UNKNOWN_LABEL,
    UNKNOWN_TYPE,
    WRONG_COLUMNS,
    LineSource,
    RowError,
    Sample,
    image_from_base64,
    parse_answers,
    parse_box,
    parse_codes,
    decode_line,
    require,
    split_list,
    with_image,
)

Parser = Callable[[list[str], str], Sample]  # (selected values, id for files without one) -> Sample


@dataclass(frozen=True)
class TsvLayout:
    file_columns: tuple[str, ...]  # the file's columns, as OFA writes them
    fields: tuple[str, ...]  # what `parse` receives, in OFA's selected_cols order
    selected: tuple[int, ...]  # OFA's default selected_cols
    parse: Parser
    optional: int = 0  # trailing fields that --columns may leave out


def _label(value: str, labels: dict[str, str]) -> str:
    label = labels.get(value.strip())
    if label is None:
        raise RowError(UNKNOWN_LABEL, f"label {value!r} is not one of {', '.join(labels)}")
    return label


def _caption(v: list[str], _: str) -> Sample:
    captions = split_list(require(v[2], "caption"))  # stage-2 files: references joined by &&
    if not captions:
        raise RowError(MISSING_FIELD, "caption has no text")
    return with_image({"id": require(v[0], "id"), "captions": captions}, image_from_base64(v[1]))


def _vqa(v: list[str], _: str) -> Sample:
    qa = {"question": require(v[2], "question"), "answers": parse_answers(v[3])}
    meta = {"id": require(v[0], "id"), "vqa": [qa]}
    if len(v) > 4 and split_list(v[4]):
        meta["objects"] = split_list(v[4])
    return with_image(meta, image_from_base64(v[1]))


def _refcoco(v: list[str], _: str) -> Sample:
    image = image_from_base64(v[1])
    ref = {"text": require(v[2], "text"), "box": parse_box(v[3], (image[2], image[3]))}
    return with_image({"id": require(v[0], "id"), "refs": [ref]}, image)


def _snli_ve(v: list[str], _: str) -> Sample:
    pair = {"hypothesis": require(v[2], "hypothesis"), "premise": v[3], "label": _label(v[4], SNLI_LABELS)}
    return with_image({"id": require(v[0], "id"), "entailment": [pair]}, image_from_base64(v[1]))


def _image_classify(v: list[str], fallback_id: str) -> Sample:
    meta = {"id": fallback_id, "label": require(v[1], "class name")}
    return with_image(meta, image_from_base64(v[0]))


def _image_gen(v: list[str], _: str) -> Sample:
    meta = {"id": require(v[0], "id"), "captions": [require(v[1], "caption")], "codes": parse_codes(v[2])}
    return with_image(meta, image_from_base64(v[3]) if len(v) > 3 else None)


def _pretrain_image(v: list[str], _: str) -> Sample:
    """OFA's image_examples.tsv: a 256x256 image and the codes of its central 128x128 (spec §3.11)."""
    meta = {"id": require(v[0], "id"), "center_codes": parse_codes(v[2])}
    return with_image(meta, image_from_base64(v[1]))


def _pretrain_text(v: list[str], _: str) -> Sample:
    """OFA's text_examples.tsv: one text per row, for text infilling (spec §3.11)."""
    return Sample({"id": require(v[0], "id"), "text": require(v[1], "text")})


def _detection(v: list[str], _: str) -> Sample:
    """OFA's detection_examples.tsv: `x0,y0,x1,y1,cat_id,cat_name&&...` (the name may hold commas)."""
    image = image_from_base64(v[1])
    items = []
    for entry in split_list(require(v[2], "objects")):
        parts = entry.strip().split(",", 5)
        if len(parts) != 6 or not parts[5].strip():
            raise RowError(BAD_FIELD, f"object {entry!r} is not x0,y0,x1,y1,category_id,category_name")
        items.append({"box": parse_box(parts[:4], (image[2], image[3])), "label": parts[5].strip(),
                      "category_id": parts[4].strip()})
    return with_image({"id": require(v[0], "id"), "detections": items}, image)


def _gigaword(v: list[str], fallback_id: str) -> Sample:
    return Sample({"id": fallback_id, "text": require(v[0], "source"), "summary": require(v[1], "target")})


def _glue(labels: dict[str, str], names: tuple[str, ...]) -> Parser:
    """GLUE rows: one or two sentences then the label, stored as its answer word (spec §3.8)."""

    def parse(v: list[str], fallback_id: str) -> Sample:
        meta = {"id": fallback_id, "text": require(v[0], names[0]), "label": _label(v[-1], labels)}
        if len(names) == 3:
            meta["text_b"] = require(v[1], names[1])
        return Sample(meta)

    return parse


def _vision_language(v: list[str], _: str) -> Sample:
    """Pretraining image-text rows; `type` picks what `refs` holds (spec §3.11)."""
    uniq_id, image, caption, question, refs, objects, dataset, kind = v
    meta: dict = {"id": require(uniq_id, "id")}
    if kind == "caption":
        meta["captions"] = [require(caption, "caption")]
    elif kind == "qa":
        meta["vqa"] = [{"question": require(question, "question"), "answers": parse_answers(refs)}]
    elif kind == "visual_grounding":
        decoded = image_from_base64(image)
        meta["refs"] = [{"text": require(caption, "caption"), "box": parse_box(refs, decoded[2:4])}]
        return with_image(_extras(meta, objects, dataset), decoded)
    else:
        raise RowError(UNKNOWN_TYPE, f"type {kind!r} is not caption, qa or visual_grounding")
    return with_image(_extras(meta, objects, dataset), image_from_base64(image))


def _extras(meta: dict, objects: str, dataset: str) -> dict:
    if split_list(objects):
        meta["objects"] = split_list(objects)
    if dataset.strip():
        meta["dataset"] = dataset
    return meta


_BINARY = {"0": "no", "1": "yes"}
_ONE = ("sentence", "label")
LAYOUTS: dict[str, TsvLayout] = {
    "caption": TsvLayout(("uniq-id", "image-id", "caption", "objects", "image"),
                         ("id", "image", "caption"), (0, 4, 2), _caption),
    "vqa": TsvLayout(("question-id", "image-id", "question", "answers", "objects", "image"),
                     ("id", "image", "question", "answers", "objects"), (0, 5, 2, 3, 4), _vqa, optional=1),
    "refcoco": TsvLayout(("uniq-id", "image-id", "text", "box", "image"),
                         ("id", "image", "text", "box"), (0, 4, 2, 3), _refcoco),
    "snli_ve": TsvLayout(("uniq-id", "image-id", "image", "hypothesis", "caption", "label"),
                         ("id", "image", "hypothesis", "caption", "label"), (0, 2, 3, 4, 5), _snli_ve),
    "image_classify": TsvLayout(("image", "label-id", "class-name"),
                                ("image", "class-name"), (0, 2), _image_classify),
    "image_gen": TsvLayout(("uniq-id", "image-codes", "caption"),
                           ("id", "caption", "codes", "image"), (0, 2, 1), _image_gen, optional=1),
    "pretrain_image": TsvLayout(("uniq-id", "image", "codes"), ("id", "image", "codes"), (0, 1, 2), _pretrain_image),
    "pretrain_text": TsvLayout(("uniq-id", "text"), ("id", "text"), (0, 1), _pretrain_text),
    "detection": TsvLayout(("uniq-id", "image", "objects"), ("id", "image", "objects"), (0, 1, 2), _detection),
    "gigaword": TsvLayout(("source", "target"), ("source", "target"), (0, 1), _gigaword),
    "cola": TsvLayout(_ONE, _ONE, (0, 1), _glue(_BINARY, _ONE)),
    "sst2": TsvLayout(_ONE, _ONE, (0, 1), _glue({"0": "negative", "1": "positive"}, _ONE)),
    "mnli": TsvLayout(("sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label"), (0, 1, 2),
                      _glue({"0": "maybe", "1": "yes", "2": "no"}, ("sentence1", "sentence2", "label"))),
    "rte": TsvLayout(("sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label"), (0, 1, 2),
                     _glue({"not_entailment": "no", "entailment": "yes"}, ("sentence1", "sentence2", "label"))),
    "qnli": TsvLayout(("question", "sentence", "label"), ("question", "sentence", "label"), (0, 1, 2),
                      _glue({"0": "no", "1": "yes", "not_entailment": "no", "entailment": "yes"},
                            ("question", "sentence", "label"))),
    "mrpc": TsvLayout(("sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label"), (0, 1, 2),
                      _glue(_BINARY, ("sentence1", "sentence2", "label"))),
    "qqp": TsvLayout(("question1", "question2", "label"), ("question1", "question2", "label"), (0, 1, 2),
                     _glue(_BINARY, ("question1", "question2", "label"))),
    "vision_language": TsvLayout(
        ("uniq-id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type"),
        ("uniq-id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type"),
        tuple(range(8)), _vision_language),
}


def check_columns(layout: TsvLayout, columns: tuple[int, ...] | None) -> tuple[int, ...]:
    """Validate a --columns selection against the layout's fields (raises ValueError)."""
    if columns is None:
        return layout.selected
    low, high = len(layout.fields) - layout.optional, len(layout.fields)
    if not low <= len(columns) <= high or min(columns) < 0:
        want = f"{low}" if low == high else f"{low} or {high}"
        raise ValueError(f"--columns needs {want} non-negative column indices, one per field "
                         f"({', '.join(layout.fields)}); got {','.join(map(str, columns))}")
    return tuple(columns)


class TsvSource(LineSource):
    """Rows of one or more TSV files -> samples."""

    def __init__(self, layout: TsvLayout, paths: list[Path], columns: tuple[int, ...] | None = None) -> None:
        super().__init__(paths)
        self.layout = layout
        self.columns = check_columns(layout, columns)
        # OFA's own files must have exactly their layout's columns; a custom selection needs enough.
        self.exact = len(layout.file_columns) if columns is None else None
        self.needed = max(self.columns) + 1

    def parse(self, raw: bytes, path: Path, lineno: int) -> Sample:
        row = decode_line(raw).split("\t")
        if self.exact is not None and len(row) != self.exact:
            raise RowError(WRONG_COLUMNS, f"{len(row)} columns, expected {self.exact} "
                                          f"({', '.join(self.layout.file_columns)})")
        if len(row) < self.needed:
            raise RowError(WRONG_COLUMNS, f"{len(row)} columns, --columns needs at least {self.needed}")
        return self.layout.parse([row[i] for i in self.columns], f"{path.stem}:{lineno}")

