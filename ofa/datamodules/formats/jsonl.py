"""JSONL: one json object per line holding shard-schema fields plus `image`, a path to the image file
(relative to --image-root, else to the JSONL file's folder). Fields outside the schema pass through."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ofa.datamodules.formats.common import (
    BAD_FIELD,
    BAD_JSON,
    MISSING_FIELD,
    SNLI_LABELS,
    UNKNOWN_LABEL,
    LineSource,
    RowError,
    Sample,
    check_conf,
    decode_line,
    image_from_file,
    parse_box,
    parse_codes,
    with_image,
)

TASK_FIELDS = ("captions", "vqa", "refs", "entailment", "label", "text", "codes")
_ENTAILMENT = {**{w: w for w in ("yes", "no", "maybe")}, **SNLI_LABELS}


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(BAD_FIELD, f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise RowError(MISSING_FIELD, f"{name} is empty")
    return value


def _items(value: Any, name: str, kind: type = dict) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise RowError(BAD_FIELD, f"{name} must be a list of {kind.__name__}")
    if not value:
        raise RowError(MISSING_FIELD, f"{name} is empty")
    return value


def _captions(value: Any) -> list[str]:
    return [_text(c, "caption") for c in _items(value, "captions", str)]


def _vqa(value: Any) -> list[dict]:
    out = []
    for qa in _items(value, "vqa"):
        answers = qa.get("answers", {})
        if not isinstance(answers, dict):
            raise RowError(BAD_FIELD, "vqa answers must be an object {answer: conf}")
        out.append({**qa, "question": _text(qa.get("question"), "question"),
                    "answers": {_text(a, "answer"): check_conf(c, a) for a, c in answers.items()}})
    return out


def _refs(value: Any) -> list[dict]:
    return [{**r, "text": _text(r.get("text"), "ref text"), "box": parse_box(r.get("box"))}
            for r in _items(value, "refs")]


def _entailment(value: Any) -> list[dict]:
    out = []
    for e in _items(value, "entailment"):
        label = e.get("label")
        if label not in _ENTAILMENT:
            raise RowError(UNKNOWN_LABEL, f"entailment label {label!r} is not yes, no or maybe")
        premise = e.get("premise", "")
        if not isinstance(premise, str):
            raise RowError(BAD_FIELD, "premise must be a string")
        out.append({**e, "hypothesis": _text(e.get("hypothesis"), "hypothesis"), "premise": premise,
                    "label": _ENTAILMENT[label]})
    return out


def _label_text(value: Any) -> Any:
    """An integer label (GLUE data often writes `"label": 1`) as its string; anything else as it is."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CHECKS: dict[str, Callable[[Any], Any]] = {
    "captions": _captions,
    "vqa": _vqa,
    "refs": _refs,
    "entailment": _entailment,
    "label": lambda v: _text(_label_text(v), "label"),
    "text": lambda v: _text(v, "text"),
    "text_b": lambda v: _text(v, "text_b"),
    "summary": lambda v: _text(v, "summary"),
    "codes": parse_codes,
    "objects": lambda v: [_text(o, "object") for o in _items(v, "objects", str)],
}


def build_sample(obj: dict[str, Any], image_root: Path, fallback_id: str) -> Sample:
    """Validate a json object against the shard schema; width/height come from the image."""
    meta = {k: CHECKS[k](v) if k in CHECKS else v for k, v in obj.items()
            if k not in ("id", "image", "width", "height")}
    if not any(k in meta for k in TASK_FIELDS):
        raise RowError(MISSING_FIELD, f"no task field (one of {', '.join(TASK_FIELDS)})")
    sample_id = obj.get("id", fallback_id)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool) or not str(sample_id).strip():
        raise RowError(BAD_FIELD, f"id {sample_id!r} must be a non-empty string or an integer")
    meta["id"] = str(sample_id)
    if "image" not in obj:
        return Sample(meta)
    image = image_from_file(image_root / _text(obj["image"], "image"))
    for ref in meta.get("refs", []):
        parse_box(ref["box"], (image[2], image[3]))
    return with_image(meta, image)


class JsonlSource(LineSource):
    def __init__(self, paths: list[Path], image_root: Path | None = None) -> None:
        super().__init__(paths)
        self.image_root = image_root

    def parse(self, raw: bytes, path: Path, lineno: int) -> Sample:
        try:
            obj = json.loads(decode_line(raw))
        except json.JSONDecodeError as err:
            raise RowError(BAD_JSON, f"not json ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise RowError(BAD_JSON, f"a line must hold a json object, not {type(obj).__name__}")
        return build_sample(obj, self.image_root or path.parent, f"{path.stem}:{lineno}")
