"""`ofa.datamodules.convert`: every OFA TSV layout, COCO json and JSONL round-trip through real shards;
bad records are reported as `file:line` and counted; --strict stops; output is byte-reproducible."""
from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from ofa.datamodules.convert import ConvertError, convert_coco, convert_jsonl, convert_tsv, main
from ofa.datamodules.formats.common import decode_base64
from subprocess_runs import ROOT, run_command


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (8, 6), color=(200, 30, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes, urlsafe: bool = True) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


JPG, PNG = image_bytes("JPEG"), image_bytes("PNG", (5, 7), (1, 2, 3))
SIZES = {JPG: (8, 6), PNG: (5, 7)}


def with_size(meta: dict, image: bytes) -> dict:
    return {**meta, "width": SIZES[image][0], "height": SIZES[image][1]}


def write_lines(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, bytes) else "\t".join(r).encode() for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def read_shards(out: Path, split: str = "train") -> list[tuple[dict, bytes | None, str | None]]:
    """Samples in shard order via webdataset: (json, image bytes, image extension)."""
    urls = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
    if not urls:
        return []
    samples = []
    for s in wds.WebDataset(urls, shardshuffle=False):
        ext = "jpg" if "jpg" in s else "png" if "png" in s else None
        samples.append((json.loads(s["json"]), s.get(ext) if ext else None, ext))
    return samples


def run_tsv(tmp_path: Path, fmt: str, rows: list, **kw):
    path = write_lines(tmp_path / f"{fmt}.tsv", rows)
    summary = convert_tsv(fmt, path, tmp_path / "out", overwrite=True, **kw)
    return summary, read_shards(tmp_path / "out"), path


# ---- each OFA layout: (rows, expected samples as (json, image)) ----------------------------------
def _glue(fmt, labels, pair=True):
    rows = [["first one", "second one", raw] if pair else ["only one", raw] for raw in labels]
    metas = [{"id": f"{fmt}:{i}", "text": r[0], "label": word, **({"text_b": r[1]} if pair else {})}
             for i, (r, word) in enumerate(zip(rows, labels.values()), start=1)]
    return rows, [(m, None) for m in metas]


LAYOUT_CASES = {
    "caption": (
        [["7", "70", "a dog on a boat", "dog&&boat", b64(JPG)], ["8", "80", "two birds", "", b64(PNG)]],
        [(with_size({"id": "7", "captions": ["a dog on a boat"]}, JPG), JPG),
         (with_size({"id": "8", "captions": ["two birds"]}, PNG), PNG)]),
    "vqa": (
        [["q1", "i1", "what color?", "0.6|!+red&&1.0|!+dark red", "car&&road", b64(JPG)],
         ["q2", "i2", "is it?", "1.0|!+yes", "", b64(PNG)]],
        [(with_size({"id": "q1", "vqa": [{"question": "what color?", "answers": {"red": 0.6, "dark red": 1.0}}],
                     "objects": ["car", "road"]}, JPG), JPG),
         (with_size({"id": "q2", "vqa": [{"question": "is it?", "answers": {"yes": 1.0}}]}, PNG), PNG)]),
    "refcoco": (
        [["r1", "i1", "the left dog", "1.5,2,7,5.25", b64(JPG)]],
        [(with_size({"id": "r1", "refs": [{"text": "the left dog", "box": [1.5, 2.0, 7.0, 5.25]}]}, JPG), JPG)]),
    "snli_ve": (
        [[f"s{i}", "i", b64(JPG), "a hypothesis", "a premise", label]
         for i, label in enumerate(["entailment", "contradiction", "neutral"])],
        [(with_size({"id": f"s{i}", "entailment": [{"hypothesis": "a hypothesis", "premise": "a premise",
                                                     "label": word}]}, JPG), JPG)
         for i, word in enumerate(["yes", "no", "maybe"])]),
    "image_classify": (
        [[b64(PNG), "281", "tabby cat"]],
        [(with_size({"id": "image_classify:1", "label": "tabby cat"}, PNG), PNG)]),
    "image_gen": (
        [["g1", "1 2 3 8191", "a red square"]],
        [({"id": "g1", "captions": ["a red square"], "codes": [1, 2, 3, 8191]}, None)]),
    "pretrain_image": (
        [["m1", b64(PNG), "4 5 6 7"]],
        [(with_size({"id": "m1", "center_codes": [4, 5, 6, 7]}, PNG), PNG)]),
    "pretrain_text": (
        [["t1", "Some text to infill."]],
        [({"id": "t1", "text": "Some text to infill."}, None)]),
    "detection": (
        [["d1", b64(JPG), "0,0,4,3,1,cat&&2.5,1,8,6,7,dog, brown"]],
        [(with_size({"id": "d1", "detections": [
            {"box": [0.0, 0.0, 4.0, 3.0], "label": "cat", "category_id": "1"},
            {"box": [2.5, 1.0, 8.0, 6.0], "label": "dog, brown", "category_id": "7"}]}, JPG), JPG)]),
    "gigaword": (
        [["a long article text", "short summary"]],
        [({"id": "gigaword:1", "text": "a long article text", "summary": "short summary"}, None)]),
    "cola": _glue("cola", {"0": "no", "1": "yes"}, pair=False),
    "sst2": _glue("sst2", {"0": "negative", "1": "positive"}, pair=False),
    "mnli": _glue("mnli", {"0": "maybe", "1": "yes", "2": "no"}),
    "rte": _glue("rte", {"not_entailment": "no", "entailment": "yes"}),
    "qnli": _glue("qnli", {"0": "no", "1": "yes", "not_entailment": "no", "entailment": "yes"}),
    "mrpc": _glue("mrpc", {"0": "no", "1": "yes"}),
    "qqp": _glue("qqp", {"0": "no", "1": "yes"}),
    "vision_language": (
        [["p1", b64(JPG), "a cat", "", "", "cat&&sofa", "coco", "caption"],
         ["p2", b64(PNG), "", "how many?", "1.0|!+2&&0.3|!+3", "", "vqav2", "qa"],
         ["p3", b64(JPG), "the cat", "", "0,0,4,3", "", "refcoco", "visual_grounding"]],
        [(with_size({"id": "p1", "captions": ["a cat"], "objects": ["cat", "sofa"], "dataset": "coco"}, JPG), JPG),
         (with_size({"id": "p2", "vqa": [{"question": "how many?", "answers": {"2": 1.0, "3": 0.3}}],
                     "dataset": "vqav2"}, PNG), PNG),
         (with_size({"id": "p3", "refs": [{"text": "the cat", "box": [0.0, 0.0, 4.0, 3.0]}],
                     "dataset": "refcoco"}, JPG), JPG)]),
}


@pytest.mark.parametrize("fmt", list(LAYOUT_CASES))
def test_layout_round_trip(tmp_path, fmt):
    rows, expected = LAYOUT_CASES[fmt]
    summary, samples, _ = run_tsv(tmp_path, fmt, rows)
    assert summary["total"] == len(expected) and summary["skipped_total"] == 0
    assert [meta for meta, _, _ in samples] == [meta for meta, _ in expected]
    for (_, data, ext), (_, image) in zip(samples, expected):
        assert data == image  # the original encoded bytes, not re-encoded
        assert ext == {JPG: "jpg", PNG: "png", None: None}[image]


def test_caption_stage2_columns_and_references(tmp_path):
    rows = [["u1", "img9", "a dog&&the dog&&", "", b64(JPG)]]
    summary, samples, _ = run_tsv(tmp_path, "caption", rows, columns=[1, 4, 2])
    assert summary["columns"] == [1, 4, 2]
    assert samples[0][0] == with_size({"id": "img9", "captions": ["a dog", "the dog"]}, JPG)


def test_columns_reorder_custom_file(tmp_path):
    """A 3-column file (caption, image, id) read with --columns like OFA's selected_cols."""
    _, samples, _ = run_tsv(tmp_path, "refcoco", [["the box", b64(JPG), "r9", "1,1,2,2"]], columns=[2, 1, 0, 3])
    assert samples[0][0]["id"] == "r9" and samples[0][0]["refs"] == [{"text": "the box", "box": [1.0, 1.0, 2.0, 2.0]}]
    with pytest.raises(ConvertError, match="--columns needs 4"):
        convert_tsv("refcoco", tmp_path / "refcoco.tsv", tmp_path / "o2", columns=[0, 1])


def test_image_gen_with_reference_image_column(tmp_path):
    _, samples, _ = run_tsv(tmp_path, "image_gen", [["g", "5 6 7 8", "cap", b64(PNG)]], columns=[0, 2, 1, 3])
    assert samples[0] == (with_size({"id": "g", "captions": ["cap"], "codes": [5, 6, 7, 8]}, PNG), PNG, "png")


def test_base64_variants_and_other_image_formats(tmp_path):
    gif = image_bytes("GIF", (4, 4), (0, 0, 255))
    rows = [["a", "", "std", "", b64(JPG, urlsafe=False)], ["b", "", "nopad", "", b64(PNG).rstrip("=")],
            ["c", "", "gif", "", b64(gif)]]
    summary, samples, _ = run_tsv(tmp_path, "caption", rows)
    assert summary["total"] == 3
    assert samples[0][1] == JPG and samples[1][1] == PNG
    meta, data, ext = samples[2]  # neither JPEG nor PNG: stored as PNG, same pixels
    assert ext == "png" and (meta["width"], meta["height"]) == (4, 4)
    assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == Image.open(io.BytesIO(gif)).convert("RGB").tobytes()
    assert decode_base64("-_-_") == decode_base64("+/+/") == b"\xfb\xff\xbf"


# ---- bad rows: reported as file:line, skipped, counted --------------------------------------------
BAD_CASES = {  # fmt: (good row, [(bad row, reason)])
    "caption": (["1", "1", "ok", "", b64(JPG)], [
        (["2", "2", "ok", b64(JPG)], "wrong column count"),
        (["3", "3", "ok", "", "@@not base64@@"], "bad base64"),
        (["4", "4", "ok", "", b64(b"not an image at all")], "bad image"),
        (["5", "5", "ok", "", b64(PNG[:30])], "bad image"),
        (["5", "5", "ok", "", b64(JPG[: len(JPG) // 2])], "bad image"),
        (["6", "6", "  ", "", b64(JPG)], "missing field"),
        (["7", "7", "ok", "", ""], "missing field"),
        (b"8\t8\t\xff\xfe\t\t" + b64(JPG).encode(), "bad encoding"),
        (b"", "empty line")]),
    "vqa": (["q", "i", "why?", "1.0|!+yes", "", b64(JPG)], [
        (["q", "i", "why?", "high|!+yes", "", b64(JPG)], "bad conf"),
        (["q", "i", "why?", "-0.5|!+yes", "", b64(JPG)], "bad conf"),
        (["q", "i", "why?", "nan|!+yes", "", b64(JPG)], "bad conf"),
        (["q", "i", "why?", "yes", "", b64(JPG)], "bad answer"),
        (["q", "i", "", "1.0|!+yes", "", b64(JPG)], "missing field")]),
    "refcoco": (["r", "i", "a dog", "1,1,4,4", b64(JPG)], [
        (["r", "i", "a dog", "1,1,x,4", b64(JPG)], "bad box"),
        (["r", "i", "a dog", "4,1,1,4", b64(JPG)], "bad box"),
        (["r", "i", "a dog", "1,4,4,4", b64(JPG)], "bad box"),
        (["r", "i", "a dog", "1,1,4", b64(JPG)], "bad box"),
        (["r", "i", "a dog", "1,1,40,4", b64(JPG)], "bad box")]),
    "snli_ve": (["s", "i", b64(JPG), "h", "p", "neutral"], [
        (["s", "i", b64(JPG), "h", "p", "entails"], "unknown label")]),
    "image_gen": (["g", "0 1 2 3", "c"], [
        (["g", "0 1 x 3", "c"], "bad codes"),
        (["g", "0 1 2", "c"], "bad codes"),
        (["g", "0 1 2 8192", "c"], "bad codes"),
        (["g", "", "c"], "missing field")]),
    "pretrain_image": (["m", b64(PNG), "0 1 2 3"], [
        (["m", b64(PNG), "0 1 2"], "bad codes"),
        (["m", b64(b"not an image at all"), "0 1 2 3"], "bad image")]),
    "detection": (["d", b64(JPG), "0,0,4,3,1,cat"], [
        (["d", b64(JPG), "0,0,4,3,cat"], "bad field"),
        (["d", b64(JPG), "0,0,40,3,1,cat"], "bad box"),
        (["d", b64(JPG), ""], "missing field")]),
    "cola": (["fine", "1"], [(["fine", "2"], "unknown label"), (["", "1"], "missing field")]),
    "rte": (["a", "b", "entailment"], [(["a", "b", "1"], "unknown label")]),
    "vision_language": (["p", b64(JPG), "c", "", "", "", "d", "caption"], [
        (["p", b64(JPG), "c", "", "", "", "d", "detection"], "unknown type"),
        (["p", b64(JPG), "c", "", "1,1,0,2", "", "d", "visual_grounding"], "bad box"),
        (["p", b64(JPG), "", "q?", "x|!+a", "", "d", "qa"], "bad conf")]),
}


@pytest.mark.parametrize("fmt", list(BAD_CASES))
def test_bad_rows_reported_skipped_and_counted(tmp_path, capsys, fmt):
    good, bad = BAD_CASES[fmt]
    rows = [good] + [row for row, _ in bad] + [good]
    summary, samples, path = run_tsv(tmp_path, fmt, rows)
    err = capsys.readouterr().err
    assert summary["total"] == len(samples) == 2  # nothing valid dropped
    for lineno, (_, reason) in enumerate(bad, start=2):
        assert f"{path}:{lineno}: {reason}: " in err
    counts: dict[str, int] = {}
    for _, reason in bad:
        counts[reason] = counts.get(reason, 0) + 1
    assert summary["skipped"] == counts and summary["records"] == len(rows)
    assert f"skipped {len(bad)} of {len(rows)} records" in err


def test_strict_stops_at_first_bad_row(tmp_path, capsys):
    path = write_lines(tmp_path / "c.tsv", [["1", "", "ok", "", b64(JPG)], ["2", "", "ok", "", "%%"],
                                            ["3", "", "ok", "", "%%"]])
    out = tmp_path / "out"
    assert main(["caption", str(path), "--out", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: bad base64" in err and f"{path}:3" not in err
    assert not list(out.glob("*.tar")) and not list(out.glob(".*tmp"))  # no partial shards
    with pytest.raises(ConvertError, match=r"c\.tsv:2: bad base64"):
        convert_tsv("caption", path, out, strict=True, shuffle=True)
    assert main(["caption", str(path), "--out", str(out)]) == 0  # without --strict: skipped


# ---- shards, determinism, shuffling ----------------------------------------------------------------
def _many_rows(n: int = 24) -> list[list[str]]:
    return [[f"id{i}", "", f"caption {i}", "", b64(image_bytes("JPEG", (8, 8), (i * 10, 0, 0)))] for i in range(n)]


def _shard_bytes(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.glob("train-*.tar"))]


def test_shard_split_and_summary(tmp_path):
    path = write_lines(tmp_path / "c.tsv", _many_rows(5))
    summary = convert_tsv("caption", path, tmp_path / "out", shard_size=2)
    assert [s["samples"] for s in summary["shards"]] == [2, 2, 1]
    assert summary["pattern"] == "train-{000000..000002}.tar" and summary["inputs"] == [str(path)]
    on_disk = json.loads((tmp_path / "out" / "train-summary.json").read_text())
    assert on_disk == summary
    ids = [m["id"] for m, _, _ in read_shards(tmp_path / "out")]
    assert ids == [f"id{i}" for i in range(5)]  # input order without --shuffle
    with pytest.raises(ConvertError, match="--overwrite"):
        convert_tsv("caption", path, tmp_path / "out")
    convert_tsv("caption", path, tmp_path / "out", shard_size=10, overwrite=True)
    assert [p.name for p in sorted((tmp_path / "out").glob("train-*.tar"))] == ["train-000000.tar"]


def test_byte_identical_and_seeded_shuffle(tmp_path):
    path = write_lines(tmp_path / "c.tsv", _many_rows())
    outs = {}
    for name, kw in {"a": {}, "b": {}, "s0": {"shuffle": True, "seed": 0}, "s0b": {"shuffle": True, "seed": 0},
                     "s1": {"shuffle": True, "seed": 1}}.items():
        convert_tsv("caption", path, tmp_path / name, shard_size=5, **kw)
        outs[name] = _shard_bytes(tmp_path / name)
    assert outs["a"] == outs["b"] and outs["s0"] == outs["s0b"]
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:  # nothing taken from the clock or the user
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "ofa", 0o444)}
    order = {k: [m["id"] for m, _, _ in read_shards(tmp_path / k)] for k in ("a", "s0", "s1")}
    assert order["a"] == [f"id{i}" for i in range(24)]
    assert order["s0"] != order["a"] and order["s1"] != order["s0"]
    assert sorted(order["s0"]) == sorted(order["s1"]) == sorted(order["a"])
    # the shuffled samples are the same samples (json and bytes) as the unshuffled ones
    by_id = {m["id"]: (m, d) for m, d, _ in read_shards(tmp_path / "a")}
    assert all(by_id[m["id"]] == (m, d) for m, d, _ in read_shards(tmp_path / "s1"))


def test_several_inputs_crlf_and_shuffle_with_bad_rows(tmp_path, capsys):
    rows = _many_rows(6)
    first = tmp_path / "a.tsv"
    first.write_bytes(b"\r\n".join("\t".join(r).encode() for r in rows[:3] + [["bad"]]) + b"\r\n")
    second = write_lines(tmp_path / "b.tsv", rows[3:])
    summary = convert_tsv("caption", [first, second], tmp_path / "in_order")
    assert [m["id"] for m, _, _ in read_shards(tmp_path / "in_order")] == [f"id{i}" for i in range(6)]
    assert summary["skipped"] == {"wrong column count": 1}
    assert f"{first}:4: wrong column count" in capsys.readouterr().err
    summary = convert_tsv("caption", [first, second], tmp_path / "shuffled", shuffle=True, seed=3)
    assert summary["total"] == 6 and summary["skipped_total"] == 1
    assert sorted(read_shards(tmp_path / "shuffled"), key=lambda s: s[0]["id"]) == read_shards(tmp_path / "in_order")


# ---- COCO and JSONL ---------------------------------------------------------------------------------
def _coco(tmp_path: Path) -> Path:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(JPG)
    (images / "b.png").write_bytes(PNG)
    (images / "broken.jpg").write_bytes(b"oops")
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"},
                       {"id": 3, "file_name": "missing.jpg"}, {"id": 4, "file_name": "broken.jpg"},
                       {"id": 5, "file_name": "a.jpg"}],
            "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": "two"},
                            {"image_id": 1, "caption": "uno"}, {"image_id": 99, "caption": "lost"},
                            {"image_id": 3, "caption": "c"}, {"image_id": 4, "caption": "d"},
                            {"image_id": 2, "caption": ""}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_groups_captions_per_image(tmp_path, capsys):
    path = _coco(tmp_path)
    summary = convert_coco(path, tmp_path / "out", image_root=tmp_path / "imgs")
    err = capsys.readouterr().err
    assert read_shards(tmp_path / "out") == [
        (with_size({"id": "1", "captions": ["one", "uno"]}, JPG), JPG, "jpg"),
        (with_size({"id": "2", "captions": ["two"]}, PNG), PNG, "png")]
    assert summary["skipped"] == {"unknown image id": 1, "missing field": 2, "missing image file": 1,
                                  "bad image": 1}
    for where in ("annotations[3]: unknown image id", "annotations[6]: missing field",
                  "images[2]: missing image file", "images[3]: bad image", "images[4]: missing field"):
        assert f"{path}:{where}" in err
    with pytest.raises(ConvertError, match="not a json file"):
        convert_coco(write_lines(tmp_path / "x.json", [["nope"]]), tmp_path / "o2")


def test_jsonl_fields_and_errors(tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(JPG)
    lines = [
        {"id": "x1", "image": "pics/a.jpg", "captions": ["c1", "c2"], "vqa": [{"question": "q?", "answers": {"a": 1}}],
         "refs": [{"text": "t", "box": [0, 0, 8, 6]}], "source": "mine"},
        {"text": "premise text", "text_b": "second", "label": "yes"},
        {"id": 7, "image": "pics/a.jpg", "entailment": [{"hypothesis": "h", "premise": "p", "label": "neutral"}]},
        "not json",
        [1, 2],
        {"image": "pics/a.jpg"},
        {"image": "pics/nope.jpg", "captions": ["c"]},
        {"image": "pics/a.jpg", "refs": [{"text": "t", "box": [0, 0, 80, 6]}]},
        {"captions": "not a list"},
        {"entailment": [{"hypothesis": "h", "label": "perhaps"}]},
        {"vqa": [{"question": "q", "answers": {"a": "high"}}]},
        {"id": "g", "text": "a sentence", "label": 1},  # integer labels (GLUE-style JSONL) become strings
        {"id": "h", "text": "a sentence", "label": True},
    ]
    path = write_lines(tmp_path / "d.jsonl", [(ln if isinstance(ln, str) else json.dumps(ln)).encode() for ln in lines])
    summary = convert_jsonl(path, tmp_path / "out")
    err = capsys.readouterr().err
    samples = read_shards(tmp_path / "out")
    assert samples[0] == (with_size({**{k: v for k, v in lines[0].items() if k != "image"}}, JPG), JPG, "jpg")
    assert samples[1] == ({"id": "d:2", "text": "premise text", "text_b": "second", "label": "yes"}, None, None)
    assert samples[2][0]["id"] == "7" and samples[2][0]["entailment"][0]["label"] == "maybe"
    expected = {4: "bad json", 5: "bad json", 6: "missing field", 7: "missing image file", 8: "bad box",
                9: "bad field", 10: "unknown label", 11: "bad conf", 13: "bad field"}
    assert samples[3] == ({"id": "g", "text": "a sentence", "label": "1"}, None, None)
    for lineno, reason in expected.items():
        assert f"{path}:{lineno}: {reason}: " in err
    assert summary["total"] == 4 and summary["skipped_total"] == len(expected)
    # --image-root resolves paths against another folder
    write_lines(tmp_path / "e.jsonl", [json.dumps({"image": "a.jpg", "label": "cat"}).encode()])
    summary = convert_jsonl(tmp_path / "e.jsonl", tmp_path / "out2", image_root=tmp_path / "pics")
    assert read_shards(tmp_path / "out2")[0][0] == with_size({"id": "e:1", "label": "cat"}, JPG)


def test_cli_module_entry_point(tmp_path):
    path = write_lines(tmp_path / "g.tsv", [["an article", "a summary"], ["only one column"]])
    proc = run_command([sys.executable, "-m", "ofa.datamodules.convert", "gigaword", str(path),
                        "--out", str(tmp_path / "out"), "--split", "valid", "--shard-size", "1"], ROOT, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert f"{path}:2: wrong column count" in proc.stderr and "wrong column count: 1" in proc.stderr
    assert (tmp_path / "out" / "valid-000000.tar").exists() and (tmp_path / "out" / "valid-summary.json").exists()
    with pytest.raises(SystemExit):  # usage errors exit with argparse's code 2
        main(["jsonl", str(path), "--out", str(tmp_path / "o"), "--columns", "0"])
    assert main(["gigaword", str(tmp_path / "absent.tsv"), "--out", str(tmp_path / "o")]) == 1


def test_platform_reader_decodes_converted_shards(tmp_path):
    """The training pipeline's own reader gets the json fields plus an RGB image (jpg and png members)."""
    shards = pytest.importorskip("ofa.datamodules.shards")
    rows, _ = LAYOUT_CASES["caption"]
    summary, samples, _ = run_tsv(tmp_path, "caption", rows)
    decoded = [shards.decode_sample(raw, 10**8) for raw in shards.read_shard(
        str(tmp_path / "out" / summary["shards"][0]["file"]), None)]
    metas = [{k: v for k, v in d.items() if k not in ("image", "__key__")} for d in decoded]
    assert metas == [m for m, _, _ in samples]
    assert [(d["image"].mode, d["image"].size) for d in decoded] == [("RGB", (8, 6)), ("RGB", (5, 7))]
