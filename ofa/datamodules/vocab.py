"""What a dataset's closed sets and vocabulary are, read from its training shards: the VQA answer candidates
(`vqa[].answers` keys), the class names (`label`) and a BPE trained on all its text.

The synthetic world writes `answers.json`, `classes.json` and `tokenizer.json` beside its shards; for the
user's own shards these are derived here on first use and cached the same way, beside the shards, so a
second run reuses them. Only the json members of the shards are read (no image is decoded), in one pass.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa.datamodules.shards import IMAGE_KEYS, SkipCounter, read_shard
from ofa.datamodules.synthetic import PROMPTS
from ofa.datamodules.synthetic_text import LABEL_WORDS, TEXT_PROMPTS
from ofa.tokenizer import OFATokenizer, train_tokenizer

TEXT_FIELDS = ("label", "text", "text_b", "summary")
DERIVED_VOCAB_SIZE = 8000  # BPE merges + bytes + specials at most; a small corpus stops earlier


@dataclass
class ShardVocab:
    """What one scan of the shards found: answer and label counts (samples with an image), every text."""

    answers: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    texts: list[str] = field(default_factory=list)
    samples: int = 0
    shards: int = 0


def read_records(url: str) -> Iterator[tuple[dict[str, Any], bool]]:
    """`(json record, has an image)` of every sample of a local tar shard that has a json member, read as the
    loader reads shards (`read_shard`: a damaged shard yields the samples before the damage, with a warning)."""
    for raw in read_shard(url, SkipCounter()):
        record = _load_json(raw["json"]) if "json" in raw else None
        if record is not None:
            yield record, any(key in IMAGE_KEYS for key in raw)


def _load_json(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def record_texts(record: dict[str, Any]) -> Iterator[str]:
    """Every text of a shard-schema record (the tokenizer's corpus): captions, questions and answers,
    referring expressions, hypotheses and premises, labels and text fields, object labels."""
    yield from _strings(record.get("captions"))
    for item in _dicts(record.get("vqa")):
        yield from _strings([item.get("question")])
        yield from _strings(list(item.get("answers") or {}))
    for item in _dicts(record.get("refs")):
        yield from _strings([item.get("text")])
    for item in _dicts(record.get("entailment")):
        yield from _strings([item.get("hypothesis"), item.get("premise")])
    yield from _strings([record.get(key) for key in TEXT_FIELDS])
    yield from _strings(record.get("objects"))


def _strings(values: Any) -> Iterator[str]:
    return (v for v in values or [] if isinstance(v, str) and v.strip())


def _dicts(values: Any) -> Iterator[dict]:
    return (v for v in values or [] if isinstance(v, dict)) if isinstance(values, list) else iter(())


def record_answers(record: dict[str, Any]) -> Iterator[str]:
    """Answers of a record's questions with a confidence above 0 (an answer nobody gave is no candidate)."""
    for item in _dicts(record.get("vqa")):
        answers = item.get("answers")
        if isinstance(answers, dict):
            yield from (str(a) for a, conf in answers.items() if _positive(conf))


def _positive(conf: Any) -> bool:
    return isinstance(conf, (int, float)) and not isinstance(conf, bool) and conf > 0


def scan_shards(urls: Sequence[str], texts: bool = False) -> ShardVocab:
    """One pass over the json of `urls` (local tar files): answer and label counts of the samples with an
    image (VQA and classification need one), and with `texts` every text of every sample."""
    found = ShardVocab()
    for url in urls:
        found.shards += 1
        for record, has_image in read_records(url):
            found.samples += 1
            if has_image:
                found.answers.update(record_answers(record))
                label = record.get("label")
                if isinstance(label, str) and label.strip():
                    found.labels[label] += 1
            if texts:
                found.texts.extend(record_texts(record))
    return found


def ranked(counts: Counter) -> list[str]:
    """Most frequent first, ties by name: the candidate order (deterministic for the same shards)."""
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def derived_tokenizer(found: ShardVocab, vocab_size: int = DERIVED_VOCAB_SIZE) -> OFATokenizer:
    """A `trained`-layout BPE over the shards' texts and OFA's task prompts (as the synthetic world's), with
    the GLUE answer words frequent enough to be single tokens (GLUE answers must be; data may say "0"/"1")."""
    words = [w for w in LABEL_WORDS for _ in range(200)]
    return train_tokenizer([*found.texts, *PROMPTS, *TEXT_PROMPTS, *words], vocab_size=vocab_size)


def write_json_atomically(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as json under a temporary name, then rename: concurrent ranks never read half a file."""
    return _replace(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n",
                                                           encoding="utf-8"))


def save_tokenizer_atomically(tokenizer: OFATokenizer, path: str | os.PathLike) -> Path:
    """`tokenizer.save(path)` under a temporary name, then rename."""
    return _replace(Path(path), tokenizer.save)


def _replace(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def local_urls(urls: Iterable[str]) -> list[str]:
    """The shard URLs that are local files (the scan reads only those)."""
    return [u for u in urls if "://" not in u and not u.startswith("pipe:")]
