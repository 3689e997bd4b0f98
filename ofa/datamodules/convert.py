"""Bring your own data: OFA TSVs, COCO caption json or JSONL -> WebDataset shards in the shard schema.

    ofa-convert-data caption caption_stage1_train.tsv --out data/coco --split train --shuffle
    ofa-convert-data caption caption_test.tsv --out data/coco --split test --columns 1,4,2
    ofa-convert-data coco captions_train2014.json --image-root train2014 --out data/mycoco
    ofa-convert-data jsonl my_data.jsonl --out data/mine

Writes `{split}-000000.tar ...` (each sample `<key>.json` + `<key>.jpg|.png`, image bytes as given) and
`{split}-summary.json`. A bad record is reported as `file:line: reason: detail` on stderr and skipped
(`--strict`: stop with exit code 1 and keep no shards). Same input + seed -> byte-identical shards.
See docs/DATA.md.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import webdataset as wds

from ofa.datamodules.formats import LAYOUTS, CocoSource, ConvertError, JsonlSource, RowError, Sample, TsvSource

DEFAULT_SHARD_SIZE = 10_000
MAX_SHOWN = 1_000  # error lines printed per reason; the counts stay exact
FORMATS = (*LAYOUTS, "coco", "jsonl")
PathLike = str | Path


class SkipReport:
    """Counts records and skipped records by reason; prints `where: reason: detail` to `log`."""

    def __init__(self, strict: bool, log: TextIO) -> None:
        self.strict, self.log = strict, log
        self.records = 0
        self.skipped: Counter[str] = Counter()

    def skip(self, where: str, err: RowError) -> None:
        if self.strict:
            raise ConvertError(f"{where}: {err.reason}: {err.detail}")
        self.skipped[err.reason] += 1
        if self.skipped[err.reason] <= MAX_SHOWN:
            print(f"{where}: {err.reason}: {err.detail}", file=self.log)
        elif self.skipped[err.reason] == MAX_SHOWN + 1:
            print(f"(further '{err.reason}' records are counted, not shown)", file=self.log)


class ShardSink:
    """Writes samples into `{split}-%06d.tar` shards of `shard_size` samples, reproducibly.

    Shards are written under temporary names and renamed by `commit()`, so a failed run leaves none.
    """

    def __init__(self, out: Path, split: str, shard_size: int) -> None:
        self.out, self.split, self.shard_size = out, split, shard_size
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._file: Any = None
        self._tar: wds.TarWriter | None = None

    def write(self, sample: Sample) -> None:
        if self._tar is None or self.shards[-1]["samples"] == self.shard_size:
            self._next_shard()
        meta = json.dumps(sample.meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        record = {"__key__": f"{self.total:09d}", "json": meta.encode("utf-8")}
        if sample.image is not None:
            record[sample.ext] = sample.image
        self._tar.write(record)
        self.shards[-1]["samples"] += 1
        self.total += 1

    def _next_shard(self) -> None:
        self._close()
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._file = open(self._tmp(name), "wb")
        # fixed mtime/owner/mode: the same samples always give the same bytes
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="ofa", group="ofa", mode=0o444)
        self.shards.append({"file": name, "samples": 0})

    def _tmp(self, name: str) -> Path:
        return self.out / f".{name}.tmp"

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._tar = self._file = None

    def commit(self) -> list[dict[str, Any]]:
        self._close()
        for old in existing_shards(self.out, self.split):
            old.unlink()
        for shard in self.shards:
            self._tmp(shard["file"]).replace(self.out / shard["file"])
            shard["bytes"] = (self.out / shard["file"]).stat().st_size
        return self.shards

    def abort(self) -> None:
        self._close()
        for shard in self.shards:
            self._tmp(shard["file"]).unlink(missing_ok=True)


def existing_shards(out: Path, split: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar")
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name)) if out.is_dir() else []


def _valid(source: Any, report: SkipReport) -> Iterator[tuple[Any, Sample]]:
    """(locator, sample) for every good record; bad ones go to the report."""
    for where, locator, parse in source.records():
        report.records += 1
        try:
            sample = parse()
        except RowError as err:
            report.skip(where, err)
            continue
        yield locator, sample


def _ordered(source: Any, report: SkipReport, shuffle: bool, seed: int) -> Iterator[Sample]:
    """Input order, or a seeded shuffle: a first pass keeps only locators, a second re-reads them."""
    if not shuffle:
        yield from (sample for _, sample in _valid(source, report))
        return
    locators = [locator for locator, _ in _valid(source, report)]
    random.Random(seed).shuffle(locators)
    for locator in locators:
        try:
            yield source.load(locator)
        except RowError as err:
            raise ConvertError(f"an input changed during the conversion ({err})") from None


def _run(source: Any, fmt: str, inputs: list[Path], out: PathLike, *, split: str = "train",
         shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0, shuffle: bool = False, strict: bool = False,
         overwrite: bool = False, log: TextIO | None = None, columns: Sequence[int] | None = None,
         ) -> dict[str, Any]:
    log = log or sys.stderr
    out = _prepare_output(Path(out), split, shard_size, overwrite)
    report = SkipReport(strict, log)
    sink = ShardSink(out, split, shard_size)
    try:
        for sample in _ordered(source, report, shuffle, seed):
            sink.write(sample)
        shards = sink.commit()
    except BaseException:
        sink.abort()
        raise
    finally:
        source.close()
    summary = {
        "format": fmt, "split": split, "inputs": [str(p) for p in inputs],
        "columns": list(columns) if columns is not None else None,
        "shuffle": shuffle, "seed": seed, "shard_size": shard_size,
        "shards": shards, "pattern": shard_pattern(split, len(shards)), "total": sink.total,
        "records": report.records, "skipped": dict(sorted(report.skipped.items())),
        "skipped_total": sum(report.skipped.values()),
    }
    (out / f"{split}-summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(_summary_line(summary, out), file=log)
    return summary


def _prepare_output(out: Path, split: str, shard_size: int, overwrite: bool) -> Path:
    if shard_size < 1:
        raise ConvertError(f"shard size must be at least 1, got {shard_size}")
    if not re.fullmatch(r"[\w.-]+", split):
        raise ConvertError(f"split {split!r} must be a plain name (letters, digits, '_', '-', '.')")
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite and (existing_shards(out, split) or (out / f"{split}-summary.json").exists()):
        raise ConvertError(f"{out} already holds '{split}' shards; pass --overwrite to replace them")
    return out


def shard_pattern(split: str, n: int) -> str:
    """The shards as one webdataset url pattern (quote the braces on a command line)."""
    if n <= 1:
        return f"{split}-000000.tar"
    return f"{split}-{{000000..{n - 1:06d}}}.tar"


def _summary_line(summary: dict[str, Any], out: Path) -> str:
    """Totals, skips by reason, and the train.py override to paste (quoted: the shell must keep the braces)."""
    line = (f"{summary['format']}: wrote {summary['total']} samples in {len(summary['shards'])} shard(s) "
            f"to {out / summary['pattern']}; skipped {summary['skipped_total']} of {summary['records']} records")
    if summary["skipped"]:
        line += " (" + ", ".join(f"{reason}: {n}" for reason, n in summary["skipped"].items()) + ")"
    if summary["split"] in ("train", "val", "test"):
        line += f"; pass to train.py: 'data.{summary['split']}_shards={out / summary['pattern']}'"
    return line


def _paths(inputs: PathLike | Sequence[PathLike]) -> list[Path]:
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ConvertError("no input files")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConvertError(f"input file not found: {', '.join(missing)}")
    return paths


def convert_tsv(fmt: str, inputs: PathLike | Sequence[PathLike], out: PathLike, *,
                columns: Sequence[int] | None = None, **options: Any) -> dict[str, Any]:
    """Convert OFA TSV files of layout `fmt` (a key of `LAYOUTS`); `columns` is OFA's selected_cols.

    Options: split, shard_size, seed, shuffle, strict, overwrite, log. Returns the summary dict.
    """
    if fmt not in LAYOUTS:
        raise ConvertError(f"unknown TSV format {fmt!r}; choose from {', '.join(LAYOUTS)}")
    paths = _paths(inputs)
    try:
        source = TsvSource(LAYOUTS[fmt], paths, tuple(columns) if columns is not None else None)
    except ValueError as err:
        raise ConvertError(str(err)) from None
    return _run(source, fmt, paths, out, columns=source.columns, **options)


def convert_coco(inputs: PathLike | Sequence[PathLike], out: PathLike, *, image_root: PathLike | None = None,
                 **options: Any) -> dict[str, Any]:
    """Convert COCO caption json files; images are looked up under `image_root` (default: the json's folder)."""
    paths = _paths(inputs)
    return _run(CocoSource(paths, Path(image_root) if image_root else None), "coco", paths, out, **options)


def convert_jsonl(inputs: PathLike | Sequence[PathLike], out: PathLike, *, image_root: PathLike | None = None,
                  **options: Any) -> dict[str, Any]:
    """Convert JSONL files of shard-schema objects with an `image` path (relative to `image_root` or the file)."""
    paths = _paths(inputs)
    return _run(JsonlSource(paths, Path(image_root) if image_root else None), "jsonl", paths, out, **options)


def _columns(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    parts = [p for v in values for p in re.split(r"[,\s]+", v) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--columns takes column indices like 0,4,2, got {' '.join(values)}")


def build_parser() -> argparse.ArgumentParser:
    layouts = "\n".join(f"  {name:16s}{', '.join(layout.file_columns)}" for name, layout in LAYOUTS.items())
    parser = argparse.ArgumentParser(
        prog="ofa-convert-data", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert OFA TSVs, COCO caption json or JSONL into WebDataset shards (docs/DATA.md).",
        epilog=f"TSV formats and their file columns:\n{layouts}\n  coco            COCO caption json + "
               "--image-root\n  jsonl           shard-schema objects with an 'image' path")
    parser.add_argument("format", choices=FORMATS, metavar="FORMAT", help="one of: " + ", ".join(FORMATS))
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, converted in the order given")
    parser.add_argument("--out", required=True, help="output folder for the shards and the summary")
    parser.add_argument("--split", default="train", help="shard name prefix (default: train)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default: 0)")
    parser.add_argument("--shuffle", action="store_true", help="seeded shuffle (default: input order)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record (exit code 1)")
    parser.add_argument("--image-root", help="image folder for coco/jsonl (default: the input file's folder)")
    parser.add_argument("--columns", nargs="+", help="OFA's selected_cols for TSV formats, e.g. 1,4,2")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards of this split")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        columns = _columns(args.columns)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    is_tsv = args.format in LAYOUTS
    if columns is not None and not is_tsv:
        parser.error("--columns applies to TSV formats only")
    if args.image_root is not None and is_tsv:
        parser.error("--image-root applies to coco and jsonl only (TSV images are inline)")
    options = dict(split=args.split, shard_size=args.shard_size, seed=args.seed, shuffle=args.shuffle,
                   strict=args.strict, overwrite=args.overwrite)
    try:
        if is_tsv:
            summary = convert_tsv(args.format, args.inputs, args.out, columns=columns, **options)
        elif args.format == "coco":
            summary = convert_coco(args.inputs, args.out, image_root=args.image_root, **options)
        else:
            summary = convert_jsonl(args.inputs, args.out, image_root=args.image_root, **options)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary["total"] == 0:
        print("error: no valid samples", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
