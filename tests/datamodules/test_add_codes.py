"""`ofa-add-codes` (`ofa.datamodules.add_codes`): codes of whole images and of their centres written into copies
of the shards, equal to the VQGAN's own encoding, row-major; samples without an image copied and counted;
existing outputs kept; one-line errors."""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from ofa.datamodules.add_codes import add_codes, encode_images, main, square, to_tensor
from ofa.vqgan_io import load_vqgan


def members(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{**dict(size=64, center=64, sample=False, seed=0, batch_size=5, overwrite=False), **kw})


def test_codes_are_the_vqgans_encoding(tiny_vqgan_dir: Path, synthetic_shards: dict, tmp_path: Path) -> None:
    vqgan = load_vqgan(tiny_vqgan_dir).eval()
    src = Path(synthetic_shards["val"].split("{")[0]).parent
    counts = add_codes([synthetic_shards["val"]], tmp_path / "out", vqgan, args())
    assert counts["coded"] == 16 and counts["shards"] == 2 and counts["without_image"] == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    before, after = members(src / "val-000000.tar"), members(tmp_path / "out" / "val-000000.tar")
    assert before.keys() == after.keys()
    for key, sample in after.items():
        record = json.loads(sample["json"])
        assert {k: v for k, v in record.items() if k not in ("codes", "center_codes")} == json.loads(before[key]["json"])
        assert sample["jpg"] == before[key]["jpg"]  # the image bytes untouched
        image = Image.open(io.BytesIO(sample["jpg"]))
        pixels = to_tensor(square(image, 64))[None]  # (1, 3, 64, 64)
        assert record["codes"] == vqgan.encode(pixels)[0].tolist() and len(record["codes"]) == 64  # 8x8
        assert record["center_codes"] == vqgan.encode(pixels[:, :, 16:48, 16:48])[0].tolist()  # 4x4


def test_a_wide_image_is_centre_cropped(tiny_vqgan_dir: Path) -> None:
    vqgan = load_vqgan(tiny_vqgan_dir).eval()
    wide = Image.new("RGB", (96, 64), "white")
    wide.paste((255, 0, 0), (0, 0, 16, 64))  # outside the central square: no effect
    codes = encode_images(vqgan, [wide], 64)  # (1, 64)
    assert codes.tolist() == vqgan.encode(to_tensor(Image.new("RGB", (64, 64), "white"))[None]).tolist()


def test_samples_without_image_are_copied_and_outputs_kept(tiny_vqgan_dir: Path, tmp_path: Path) -> None:
    import webdataset as wds

    shard = tmp_path / "in" / "train-000000.tar"
    shard.parent.mkdir()
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(png, format="PNG")
    with wds.TarWriter(str(shard), encoder=False) as w:
        w.write({"__key__": "a", "png": png.getvalue(), "json": b'{"id": "a"}'})
        w.write({"__key__": "b", "json": b'{"id": "b"}'})
        w.write({"__key__": "c", "png": b"not a png", "json": b'{"id": "c"}'})
    vqgan = load_vqgan(tiny_vqgan_dir)
    counts = add_codes([str(shard)], tmp_path / "out", vqgan, args(center=0))
    assert counts["coded"] == 1 and counts["without_image"] == 2
    out = members(tmp_path / "out" / "train-000000.tar")
    assert "codes" in json.loads(out["a"]["json"]) and json.loads(out["b"]["json"]) == {"id": "b"}
    assert out["c"]["png"] == b"not a png"
    assert add_codes([str(shard)], tmp_path / "out", vqgan, args())["kept"] == 1


def test_cli_errors_are_one_line(tiny_vqgan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "x-*.tar"), "--vqgan", str(tiny_vqgan_dir), "--out", str(tmp_path), "--size", "64"]) == 1
    assert "matches no files" in capsys.readouterr().err
    assert main(["a.tar", "--vqgan", str(tmp_path / "none"), "--out", str(tmp_path), "--size", "64"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["a.tar", "--vqgan", str(tiny_vqgan_dir), "--out", str(tmp_path)]) == 2
