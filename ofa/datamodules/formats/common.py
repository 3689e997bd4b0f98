"""What every input format shares: the parsed `Sample`, row errors and the field parsers.

A parser turns one input record into a `Sample` (the shard-schema json + the encoded image) or raises
`RowError(reason, detail)`; the converter adds `file:line` and decides whether to skip or stop.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

# Reasons a record is skipped; the summary counts skipped records under these names.
WRONG_COLUMNS = "wrong column count"
BAD_ENCODING = "bad encoding"
BAD_JSON = "bad json"
MISSING_FIELD = "missing field"
BAD_FIELD = "bad field"
BAD_BASE64 = "bad base64"
BAD_IMAGE = "bad image"
MISSING_IMAGE_FILE = "missing image file"
BAD_BOX = "bad box"
BAD_CONF = "bad conf"
BAD_ANSWER = "bad answer"
UNKNOWN_LABEL = "unknown label"
UNKNOWN_TYPE = "unknown type"
BAD_CODES = "bad codes"
UNKNOWN_IMAGE_ID = "unknown image id"
EMPTY_LINE = "empty line"

NUM_CODES = 8192  # VQGAN codebook size (spec §2, code_dict_size)
SNLI_LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
_JPEG_END, _JPEG_TAIL = b"\xff\xd9", 4096  # EOI marker, searched in the last bytes (trailers exist)
_KEPT_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}  # kept as they are (MPO: camera JPEG); others become PNG


class ConvertError(RuntimeError):
    """A conversion that stops: a bad record under --strict, or unusable inputs or output."""


class RowError(ValueError):
    """A record that cannot become a sample: `reason` is one of the names above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One shard sample: the json dict (shard schema) and the encoded image, if any."""

    meta: dict[str, Any]
    image: bytes | None = None
    ext: str | None = None  # "jpg" | "png" when there is an image


def require(value: str, name: str) -> str:
    """A text column that must not be empty."""
    if not value.strip():
        raise RowError(MISSING_FIELD, f"{name} is empty")
    return value


def decode_base64(text: str) -> bytes:
    """URL-safe base64 (OFA's TSVs) or standard base64; padding may be missing."""
    data = text.strip().replace("-", "+").replace("_", "/")
    if not data:
        raise RowError(MISSING_FIELD, "image is empty")
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RowError(BAD_BASE64, f"image column is not base64 ({err})") from None


def encoded_image(data: bytes) -> tuple[bytes, str, int, int]:
    """Check an encoded image -> (bytes, ext, width, height), normally without decoding its pixels.

    JPEG and PNG bytes are kept as they are; other formats are decoded once and stored as PNG.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if _KEPT_FORMATS.get(fmt) == "jpg" and _JPEG_END not in data[-_JPEG_TAIL:]:
                img.load()  # PIL's verify() does not read JPEGs; decode only those without an end marker
            else:
                img.verify()  # PNG: chunk CRCs up to IEND, no pixel decoding
    except Exception as err:  # PIL raises many types for broken files
        raise RowError(BAD_IMAGE, f"not a readable image ({type(err).__name__}: {err})") from None
    if width <= 0 or height <= 0:
        raise RowError(BAD_IMAGE, f"image has size {width}x{height}")
    if fmt in _KEPT_FORMATS:
        return data, _KEPT_FORMATS[fmt], width, height
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            out = io.BytesIO()
            img.save(out, format="PNG")
    except Exception as err:
        raise RowError(BAD_IMAGE, f"cannot decode {fmt} image ({type(err).__name__}: {err})") from None
    return out.getvalue(), "png", width, height


def image_from_base64(text: str) -> tuple[bytes, str, int, int]:
    return encoded_image(decode_base64(text))


def image_from_file(path: Path) -> tuple[bytes, str, int, int]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RowError(MISSING_IMAGE_FILE, f"{path}: {err.strerror or err}") from None
    return encoded_image(data)


def with_image(meta: dict[str, Any], image: tuple[bytes, str, int, int] | None) -> Sample:
    """Attach an image (and its size) to a json dict."""
    if image is None:
        return Sample(meta)
    data, ext, width, height = image
    meta["width"], meta["height"] = width, height
    return Sample(meta, data, ext)


def _number(text: Any, reason: str, what: str) -> float:
    if isinstance(text, bool):
        raise RowError(reason, f"{what} {text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RowError(reason, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RowError(reason, f"{what} {text!r} is not a finite number")
    return value


def parse_box(value: str | list, size: tuple[int, int] | None = None) -> list[float]:
    """`"x0,y0,x1,y1"` (or a list of 4 numbers) in original pixels; x1 > x0, y1 > y0, inside the image."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list) or len(parts) != 4:
        raise RowError(BAD_BOX, f"box {value!r} does not have 4 coordinates x0,y0,x1,y1")
    x0, y0, x1, y1 = (_number(p, BAD_BOX, "box coordinate") for p in parts)
    if x1 <= x0 or y1 <= y0:
        raise RowError(BAD_BOX, f"box {value!r} needs x1 > x0 and y1 > y0")
    if size is not None:
        width, height = size
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise RowError(BAD_BOX, f"box {value!r} lies outside the {width}x{height} image")
    return [x0, y0, x1, y1]


def parse_answers(value: str) -> dict[str, float]:
    """OFA's `conf|!+answer&&conf|!+answer` -> {answer: conf}; a later duplicate wins, as in OFA."""
    answers: dict[str, float] = {}
    for item in value.split("&&"):
        if not item.strip():
            continue
        conf, sep, answer = item.partition("|!+")
        if not sep or not answer.strip():
            raise RowError(BAD_ANSWER, f"answer {item!r} is not 'conf|!+answer'")
        answers[answer] = check_conf(conf, answer)
    return answers


def check_conf(conf: Any, answer: str) -> float:
    value = _number(conf, BAD_CONF, f"confidence of {answer!r}")
    if value < 0:
        raise RowError(BAD_CONF, f"confidence of {answer!r} is negative ({value})")
    return value


def parse_codes(value: str | list) -> list[int]:
    """VQGAN codes (space-separated or a list): ints in [0, 8192) forming a square grid."""
    parts = value.split() if isinstance(value, str) else value
    if not isinstance(parts, list):
        raise RowError(BAD_CODES, f"image codes {parts!r} are not a list")
    if not parts:
        raise RowError(MISSING_FIELD, "image codes are empty")
    try:
        codes = [_integer(p) for p in parts]
    except (TypeError, ValueError):
        raise RowError(BAD_CODES, "image codes are not all integers") from None
    bad = [c for c in codes if not 0 <= c < NUM_CODES]
    if bad:
        raise RowError(BAD_CODES, f"code {bad[0]} is outside [0, {NUM_CODES})")
    side = math.isqrt(len(codes))
    if side * side != len(codes):
        raise RowError(BAD_CODES, f"{len(codes)} codes do not form a square grid")
    return codes


def _integer(value: Any) -> int:
    if isinstance(value, (bool, float)):
        raise ValueError(value)
    return int(value)


def split_list(value: str) -> list[str]:
    """OFA's `&&`-joined lists (references, object labels), empty items dropped."""
    return [item for item in value.split("&&") if item.strip()]


Locator = tuple[int, int, int]  # (input index, byte offset, line number)
Record = tuple[str, Locator, Callable[[], Sample]]  # (where, locator, parse it)


class LineSource:
    """Line-per-record files (TSV, JSONL): subclasses implement `parse(raw, path, lineno)`.

    `records()` streams every line with a locator; `load(locator)` parses that line again, so a
    shuffled conversion keeps only locators in memory.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._files: dict[int, Any] = {}

    def parse(self, raw: bytes, path: Path, lineno: int) -> Sample:
        raise NotImplementedError

    def records(self) -> Iterator[Record]:
        for index, path in enumerate(self.paths):
            with open(path, "rb") as f:
                offset = 0
                for lineno, raw in enumerate(f, start=1):
                    yield f"{path}:{lineno}", (index, offset, lineno), _bind(self.parse, raw, path, lineno)
                    offset += len(raw)

    def load(self, locator: Locator) -> Sample:
        index, offset, lineno = locator
        if index not in self._files:
            self._files[index] = open(self.paths[index], "rb")
        f = self._files[index]
        f.seek(offset)
        return self.parse(f.readline(), self.paths[index], lineno)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def decode_line(raw: bytes) -> str:
    """A line without its newline; not UTF-8 or blank -> RowError."""
    try:
        line = raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowError(BAD_ENCODING, f"line is not UTF-8 ({err.reason} at byte {err.start})") from None
    if not line.strip():
        raise RowError(EMPTY_LINE, "line is empty")
    return line


def _bind(fn: Callable[..., Sample], *args: Any) -> Callable[[], Sample]:
    return lambda: fn(*args)
