"""Add VQGAN codes to existing image shards, so that training never encodes images on the fly.

    ofa-add-codes --vqgan checkpoints/vqgan --out data/coco_codes 'data/coco/train-*.tar' --size 256
    ofa-add-codes --vqgan data/synthetic/vq_nano --out data/infill --center 128 'data/synthetic/train-*.tar'

Each input shard `<dir>/<name>.tar` becomes `<out>/<name>.tar`: the same members, its json gaining
- `codes` (`--size S`): the row-major codes of the image resized to S x S — text-to-image targets
  (`task=image_gen`, `code_image_size=S`); OFA's `generate_code.py` resizes the shorter side to S with
  LANCZOS and assumes square images, here a non-square image is centre-cropped to a square first;
- `center_codes` (`--center S`): the codes of the central S/2 x S/2 of the image resized to S x S —
  image-infilling targets (`task=image_infill`, `image_size=S`; OFA: S=256, 256 codes).
Codes are `proj(z).argmax` (deterministic); `--sample` draws them as OFA's taming encoder does (Gumbel
noise, `--seed`). A sample without a decodable image is copied unchanged and counted; shards are written
under a temporary name and renamed when complete, and an existing output shard is kept (`--overwrite`).
Other files of the input folders (tokenizer.json, ...) are copied once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image

from ofa.datamodules.shards import IMAGE_KEYS, SkipSample, decode_image, expand_shards, read_shard

MAX_PIXELS = 50_000_000


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, resize to `size` (LANCZOS, as OFA's code extraction)."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.convert("RGB").crop(box).resize((size, size), Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) in [-1, 1] (OFA's `2x - 1`)."""
    w, h = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
    return pixels.float().div(255).mul(2).sub(1)


@torch.no_grad()
def encode_images(vqgan: Any, images: list[Image.Image], size: int, center: bool = False, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, n) codes of `images` resized to `size` (the central half only when `center`)."""
    batch = torch.stack([to_tensor(square(im, size)) for im in images])  # (B, 3, S, S)
    if center:
        batch = batch[:, :, size // 4: size - size // 4, size // 4: size - size // 4]  # (B, 3, S/2, S/2)
    device = next(vqgan.parameters()).device
    return vqgan.encode(batch.to(device), sample=sample, generator=generator).cpu()


class CodeWriter:
    """Buffers samples, encodes their images in batches, writes them to one output shard in order."""

    def __init__(self, vqgan: Any, args: argparse.Namespace, writer: Any, counts: Counter) -> None:
        self.vqgan, self.args, self.writer, self.counts = vqgan, args, writer, counts
        self.pending: list[tuple[dict[str, Any], dict[str, Any], Image.Image | None]] = []
        self.generator = torch.Generator().manual_seed(args.seed) if args.sample else None

    def add(self, raw: dict[str, Any]) -> None:
        record, image = None, None
        try:
            record = json.loads(raw["json"]) if "json" in raw else None
            key = next((k for k in IMAGE_KEYS if k in raw), None)
            image = decode_image(raw[key], MAX_PIXELS, raw["__key__"]) if key and isinstance(record, dict) else None
        except (SkipSample, ValueError):
            image = None
        if image is None:
            self.counts["without_image"] += 1
        self.pending.append((raw, record, image))
        if len(self.pending) >= self.args.batch_size:
            self.flush()

    def flush(self) -> None:
        coded = [(rec, im) for _, rec, im in self.pending if im is not None]
        images = [im for _, im in coded]
        fields = {"codes": (self.args.size, False), "center_codes": (self.args.center, True)}
        for name, (size, center) in fields.items():
            if size and images:
                codes = encode_images(self.vqgan, images, size, center, self.args.sample, self.generator)
                for (record, _), row in zip(coded, codes.tolist()):
                    record[name] = row
        for raw, record, image in self.pending:
            sample = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
            if image is not None:
                sample["json"] = json.dumps(record).encode("utf-8")
                self.counts["coded"] += 1
            self.writer.write(sample)
        self.pending = []


def add_codes_to_shard(url: str, dst: Path, vqgan: Any, args: argparse.Namespace, counts: Counter) -> None:
    """Write `dst` (atomically: a temporary name, renamed when complete)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with wds.TarWriter(str(tmp), mtime=0, encoder=False) as writer:
            coder = CodeWriter(vqgan, args, writer, counts)
            for raw in read_shard(url, None):
                coder.add(raw)
            coder.flush()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def add_codes(shards: Sequence[str], out: str | os.PathLike, vqgan: Any, args: argparse.Namespace) -> Counter:
    """Every shard of `shards` -> `out/<name>.tar` with codes; returns counts (coded, without_image, shards)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    for url in expand_shards(list(shards)):
        dst = out_dir / Path(url).name
        _copy_sidecars(Path(url).parent, out_dir)
        if dst.exists() and not args.overwrite:
            counts["kept"] += 1
            continue
        add_codes_to_shard(url, dst, vqgan, args, counts)
        counts["shards"] += 1
    return counts


def _copy_sidecars(src: Path, out: Path) -> None:
    """The input folder's other files (tokenizer.json, summaries ...), if not there yet."""
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".tar" and not path.name.startswith(".") and not (out / path.name).exists():
            shutil.copy2(path, out / path.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-add-codes", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", help="input shards: files, globs or brace patterns (quote them)")
    parser.add_argument("--vqgan", required=True, help="the VQGAN: a dir with model.yaml + last.ckpt")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=0, help="add `codes` of the image at SIZE x SIZE")
    parser.add_argument("--center", type=int, default=0, help="add `center_codes` of the centre half at SIZE")
    parser.add_argument("--sample", action="store_true", help="Gumbel-sampled codes, as OFA's encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="rewrite output shards that exist")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.size and not args.center:
        print("ofa-add-codes: nothing to add: give --size and/or --center", file=sys.stderr)
        return 2
    from ofa.safe_load import CheckpointError
    from ofa.vqgan_io import load_vqgan

    try:
        vqgan = load_vqgan(args.vqgan).eval().to(args.device)
        shards = expand_shards(args.shards)
        if not shards:
            raise FileNotFoundError(f"no shard matches {' '.join(args.shards)}")
        counts = add_codes(shards, args.out, vqgan, args)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"ofa-add-codes: {err}", file=sys.stderr)
        return 1
    print(f"ofa-add-codes: {counts['coded']} samples coded, {counts['without_image']} without a usable image "
          f"(copied unchanged), {counts['shards']} shards written, {counts['kept']} kept -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
