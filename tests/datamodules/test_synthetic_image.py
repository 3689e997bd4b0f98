"""The text-to-image world (`ofa.datamodules.synthetic_image`): records whose captions name what the pixels
show, the synthetic tokenizer beside them, same seed -> same bytes."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from ofa.datamodules.synthetic_image import ensure_synthetic_image
from ofa.datamodules.synthetic_world import COLORS, location_name

TINY = dict(num_train=12, num_val=4, num_test=4)


def read(path: Path) -> list[tuple[dict, Image.Image]]:
    out = []
    with tarfile.open(path) as tar:
        for name in sorted(n for n in tar.getnames() if n.endswith(".json")):
            record = json.loads(tar.extractfile(name).read())
            out.append((record, Image.open(io.BytesIO(tar.extractfile(name[:-5] + ".png").read())).convert("RGB")))
    return out


def test_captions_name_what_the_pixels_show(tmp_path: Path) -> None:
    out = ensure_synthetic_image(tmp_path / "w", **TINY)
    samples = read(out / "train-000000.tar")
    assert len(samples) == 12 and len(read(out / "test-000000.tar")) == 4
    for record, image in samples:
        (obj,) = record["objects"]
        row, col = obj["cell"]
        caption = f"a{'n' if obj['size'][0] in 'aeiou' else ''} {obj['size']} {obj['color']} {obj['shape']} " \
                  f"at the {location_name(row, col)}"
        assert record["captions"] == [caption, f"there is {caption}"]
        x0, y0, x1, y1 = obj["box"]
        assert image.size == (64, 64) and image.getpixel(((x0 + x1) // 2, (y0 + y1 - 1) // 2 + 1)) == COLORS[obj["color"]]
        assert col == min((x0 + x1) // 2 * 3 // 64, 2) and row == min((y0 + y1) // 2 * 3 // 64, 2)


def test_same_seed_same_bytes(tmp_path: Path, synthetic_data_dir: Path) -> None:
    a = ensure_synthetic_image(tmp_path / "a", tokenizer=synthetic_data_dir / "tokenizer.json", **TINY)
    b = ensure_synthetic_image(tmp_path / "b", **TINY)
    c = ensure_synthetic_image(tmp_path / "c", seed=1, **TINY)
    assert (a / "train-000000.tar").read_bytes() == (b / "train-000000.tar").read_bytes()
    assert (a / "train-000000.tar").read_bytes() != (c / "train-000000.tar").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (synthetic_data_dir / "tokenizer.json").read_bytes()
    assert ensure_synthetic_image(tmp_path / "a", **TINY) == a  # there already: kept
