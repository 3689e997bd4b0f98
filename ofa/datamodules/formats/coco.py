"""COCO caption json (`images` + `annotations`) with an image folder: one sample per image holding all
its captions in annotation order. Records are reported as `file:images[i]` / `file:annotations[i]`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ofa.datamodules.formats.common import (
    BAD_FIELD,
    MISSING_FIELD,
    UNKNOWN_IMAGE_ID,
    ConvertError,
    Record,
    RowError,
    Sample,
    image_from_file,
    with_image,
)


def load_coco(path: Path) -> tuple[list, list]:
    """The `images` and `annotations` lists of a COCO caption file (ConvertError if it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path}: not a json file ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ConvertError(f"{path}: a COCO caption file needs 'images' and 'annotations' lists")
    return data["images"], data["annotations"]


def _image_id(item: Any, key: str) -> int | str:
    if not isinstance(item, dict) or key not in item:
        raise RowError(MISSING_FIELD, f"no {key!r}")
    value = item[key]
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        raise RowError(BAD_FIELD, f"{key} {value!r} must be an integer or a string")
    return value


def _caption(ann: Any, known: set) -> tuple[int | str, str]:
    image_id = _image_id(ann, "image_id")
    if image_id not in known:
        raise RowError(UNKNOWN_IMAGE_ID, f"image_id {image_id!r} is not in 'images'")
    caption = ann.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise RowError(MISSING_FIELD, f"caption {caption!r} is empty or not a string")
    return image_id, caption


def _raise(err: RowError):
    def parse() -> Sample:
        raise err

    return parse


class CocoSource:
    """Images of one or more COCO caption files -> samples (captions grouped per image)."""

    def __init__(self, paths: list[Path], image_root: Path | None = None) -> None:
        self.paths, self.image_root = paths, image_root
        self._files: dict[int, tuple[list, dict, Path]] = {}  # index -> (images, captions by id, root)

    def records(self) -> Iterator[Record]:
        for index, path in enumerate(self.paths):
            images, annotations = load_coco(path)
            known, errors = self._index_images(images)
            captions: dict[int | str, list[str]] = {}
            for i, ann in enumerate(annotations):
                try:
                    image_id, caption = _caption(ann, known)
                    captions.setdefault(image_id, []).append(caption)
                except RowError as err:
                    yield f"{path}:annotations[{i}]", None, _raise(err)
            self._files[index] = (images, captions, self.image_root or path.parent)
            for i in range(len(images)):
                where, locator = f"{path}:images[{i}]", (index, i, 0)
                yield where, locator, _raise(errors[i]) if i in errors else _bind_load(self, locator)

    @staticmethod
    def _index_images(images: list) -> tuple[set, dict[int, RowError]]:
        known: set = set()
        errors: dict[int, RowError] = {}
        for i, image in enumerate(images):
            try:
                image_id = _image_id(image, "id")
            except RowError as err:
                errors[i] = err
                continue
            if image_id in known:
                errors[i] = RowError(BAD_FIELD, f"image id {image_id!r} appears twice in 'images'")
            known.add(image_id)
        return known, errors

    def load(self, locator: tuple[int, int, int]) -> Sample:
        images, captions, root = self._files[locator[0]]
        image = images[locator[1]]
        image_id = image["id"]
        if image_id not in captions:
            raise RowError(MISSING_FIELD, f"image id {image_id!r} has no captions")
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise RowError(MISSING_FIELD, f"image id {image_id!r} has no 'file_name'")
        meta = {"id": str(image_id), "captions": captions[image_id]}
        return with_image(meta, image_from_file(root / file_name))

    def close(self) -> None:
        self._files.clear()


def _bind_load(source: CocoSource, locator: tuple[int, int, int]):
    return lambda: source.load(locator)
