"""The shard scanner behind the derived answers.json / classes.json / tokenizer.json (ofa/datamodules/vocab.py)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import webdataset as wds
from PIL import Image

from ofa.datamodules import vocab
from ofa.datamodules.synthetic import PROMPTS


def jpeg(size: tuple[int, int] = (7, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict]) -> str:
    """A tar shard of `{"__key__", "json": dict | bytes, "jpg": bytes (optional)}` samples."""
    with wds.TarWriter(str(path), encoder=False) as writer:
        for s in samples:
            body = s["json"] if isinstance(s["json"], bytes) else json.dumps(s["json"]).encode()
            writer.write({"__key__": s["__key__"], "json": body, **({"jpg": s["jpg"]} if "jpg" in s else {})})
    return str(path)


def vqa(question: str, answers: dict) -> dict:
    return {"vqa": [{"question": question, "answers": answers}]}


def test_scan_counts_answers_and_labels_of_samples_with_an_image(tmp_path: Path) -> None:
    first = write_shard(tmp_path / "train-000000.tar", [
        {"__key__": "a", "json": {**vqa("what color?", {"red": 1.0, "dark red": 0.3, "pink": 0}),
                                  "label": "cat"}, "jpg": jpeg()},
        {"__key__": "b", "json": {**vqa("what shape?", {"round": 1.0}), "label": "dog"}, "jpg": jpeg((3, 9))},
        {"__key__": "c", "json": {**vqa("no image?", {"unseen": 1.0}), "label": "fish"}},  # text only
    ])
    second = write_shard(tmp_path / "train-000001.tar", [
        {"__key__": "d", "json": {**vqa("what color?", {"red": 0.6}), "label": "cat"}, "jpg": jpeg()},
        {"__key__": "e", "json": b"{not json", "jpg": jpeg()},
    ])
    found = vocab.scan_shards([first, second])
    assert found.shards == 2 and found.samples == 4  # the broken json is not a sample
    assert found.answers == {"red": 2, "dark red": 1, "round": 1}  # conf 0 and text-only samples left out
    assert vocab.ranked(found.answers) == ["red", "dark red", "round"]  # most frequent, then by name
    assert vocab.ranked(found.labels) == ["cat", "dog"] and found.texts == []


def test_scan_collects_every_text_field(tmp_path: Path) -> None:
    record = {"captions": ["a dog", ""], **vqa("what is it?", {"dog": 1.0}), "label": "animal",
              "refs": [{"text": "the dog", "box": [0, 0, 1, 1]}], "objects": ["dog", 3],
              "entailment": [{"hypothesis": "a pet", "premise": "a dog", "label": "yes"}],
              "text": "article", "text_b": "second", "summary": "short"}
    shard = write_shard(tmp_path / "s.tar", [{"__key__": "k", "json": record, "jpg": jpeg()}])
    texts = vocab.scan_shards([shard], texts=True).texts
    assert sorted(texts) == sorted(["a dog", "what is it?", "dog", "the dog", "a pet", "a dog", "animal",
                                    "article", "second", "short", "dog"])


def test_damaged_shard_keeps_the_records_before_the_damage(tmp_path: Path) -> None:
    good = [{"__key__": f"{i:03d}", "json": {"label": f"c{i}"}, "jpg": jpeg()} for i in range(3)]
    path = tmp_path / "cut.tar"
    data = Path(write_shard(path, good)).read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut mid-way
    found = vocab.scan_shards([str(path), str(tmp_path / "missing.tar")])
    assert found.shards == 2 and 1 <= found.samples < 3


def test_derived_tokenizer_knows_the_texts_and_prompts(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s.tar", [
        {"__key__": str(i), "json": vqa("what color is the zebra?", {"black and white": 1.0}), "jpg": jpeg()}
        for i in range(4)])
    tok = vocab.derived_tokenizer(vocab.scan_shards([shard], texts=True), vocab_size=400)
    assert tok.decode(tok.encode(" black and white")) == " black and white"
    assert len(tok.encode(" zebra")) <= 2 and len(tok.encode(PROMPTS[0])) < len(PROMPTS[0]) // 2
    assert tok.num_bins == 1000 and tok.num_codes == 8192  # grounding and image codes keep their ids


def test_atomic_writes_leave_only_the_file(tmp_path: Path) -> None:
    path = vocab.write_json_atomically(tmp_path / "sub" / "answers.json", ["é", "b"])
    assert json.loads(path.read_text("utf-8")) == ["é", "b"] and path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["answers.json"]


def test_local_urls() -> None:
    assert vocab.local_urls(["/a/b.tar", "pipe:curl x", "https://h/c.tar", "d.tar"]) == ["/a/b.tar", "d.tar"]
