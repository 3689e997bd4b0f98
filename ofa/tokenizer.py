"""OFA's vocabulary: byte-level BPE + `<mask>` + `<code_i>` + `<bin_i>` (spec §2).

Every layout is turned into one `tokenizers.Tokenizer` whose ids already are model ids, so `encode` is a
single call into the Rust library:

- `ofa`: GPT-2 `encoder.json` + `vocab.bpe`, re-numbered through fairseq's `dict.txt`
  (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, dict entries 4.., `<mask>`, codes, bins: 59457 ids).
- `hf`: BART's `vocab.json` + `merges.txt` (already in model-id order) + code and bin tokens.
- `trained`: a `tokenizer.json` written by `train_tokenizer(...).save(...)` for corpora without OFA's files.

Location tokens (`<bin_i>`, `<code_i>`, `<mask>`) written inside a text are matched whole and eat the
spaces around them, like OFA's `encode_text(..., use_bpe=False)` on `"<bin_1> <bin_2>"`.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
NUM_CODES = 8192
NUM_BINS = 1000
KINDS = ("ofa", "hf", "trained")


class OFATokenizer:
    """OFA vocabulary over a `tokenizers.Tokenizer` whose ids are model ids (build with `build_tokenizer`)."""

    def __init__(self, backend: Tokenizer) -> None:
        self._tok = backend
        self.bos, self.pad, self.eos, self.unk = (self._require(t) for t in SPECIALS)
        if (self.bos, self.pad, self.eos, self.unk) != (0, 1, 2, 3):
            raise ValueError("OFATokenizer: <s>, <pad>, </s>, <unk> must have ids 0, 1, 2, 3")
        self.mask = self._require(MASK)
        self.code_offset, self.num_codes = self._token_range("code", self.mask + 1)
        self.bin_offset, self.num_bins = self._token_range("bin", self.code_offset + self.num_codes)
        self._size = backend.get_vocab_size(with_added_tokens=True)

    def _require(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"OFATokenizer: vocabulary has no {token} token")
        return idx

    def _token_range(self, kind: str, expected_start: int) -> tuple[int, int]:
        """(offset, count) of the contiguous `<kind_0>..<kind_{n-1}>` block, which must start where expected."""
        start = self._tok.token_to_id(f"<{kind}_0>")
        if start is None:
            return expected_start, 0
        if start != expected_start:
            raise ValueError(f"OFATokenizer: <{kind}_0> has id {start}, expected {expected_start}")
        count = 1
        while self._tok.token_to_id(f"<{kind}_{count}>") == start + count:
            count += 1
        return start, count

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (f"OFATokenizer(size={len(self)}, mask={self.mask}, codes={self.code_offset}+{self.num_codes}, "
                f"bins={self.bin_offset}+{self.num_bins})")

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` (no `<s>`/`</s>`); OFA texts start with a space: `" what does the image describe?"`."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping `<s> <pad> </s> <unk> <mask>`; bins and codes appear as `<bin_i>` words."""
        ids = [int(i) for i in ids]
        if all(i < self.mask for i in ids):  # the common case: plain text
            return self._tok.decode(ids, skip_special_tokens=True)
        out, run = "", []
        for i in ids + [self.mask]:  # sentinel flushes the last text run
            if i < self.mask:
                run.append(i)
                continue
            out += self._tok.decode(run, skip_special_tokens=True) if run else ""
            run = []
            if i >= self.code_offset and i < len(self):
                out += ("" if not out or out.endswith(" ") else " ") + self._tok.id_to_token(i)
        return out

    def bin_token(self, i: int) -> int:
        """Id of `<bin_i>` (quantised coordinate, 0 <= i < num_bins)."""
        if not 0 <= i < self.num_bins:
            raise ValueError(f"bin index {i} outside [0, {self.num_bins})")
        return self.bin_offset + i

    def code_token(self, i: int) -> int:
        """Id of `<code_i>` (image code, 0 <= i < num_codes)."""
        if not 0 <= i < self.num_codes:
            raise ValueError(f"code index {i} outside [0, {self.num_codes})")
        return self.code_offset + i

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole vocabulary as one `tokenizer.json` (loadable with `build_tokenizer("trained", path)`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path


# ---- building --------------------------------------------------------------------------------------
def build_tokenizer(kind: str, path: str | os.PathLike, num_codes: int = NUM_CODES,
                    num_bins: int = NUM_BINS) -> OFATokenizer:
    """Load a vocabulary: `ofa` (dir with encoder.json, vocab.bpe, dict.txt), `hf` (dir with vocab.json,
    merges.txt) or `trained` (a tokenizer.json or its dir). Cached: repeated calls return the same object.

    `num_codes`/`num_bins` apply to `ofa` and `hf`; a trained tokenizer.json carries its own.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    path = Path(path).expanduser().resolve()
    if kind == "trained" and path.is_dir():
        path = path / "tokenizer.json"
    names = {"ofa": ("encoder.json", "vocab.bpe", "dict.txt"), "hf": ("vocab.json", "merges.txt"),
             "trained": ()}[kind]
    files = [path / n for n in names] or [path]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{kind} tokenizer: missing {f} (needs {', '.join(names) or 'tokenizer.json'})")
    stamp = tuple(f.stat().st_mtime_ns for f in files)
    return _build_cached(kind, str(path), num_codes, num_bins, stamp)


@functools.lru_cache(maxsize=8)
def _build_cached(kind: str, path: str, num_codes: int, num_bins: int, stamp: tuple) -> OFATokenizer:
    if kind == "trained":
        return OFATokenizer(Tokenizer.from_file(path))
    vocab, merges = _read_ofa_files(Path(path)) if kind == "ofa" else _read_hf_files(Path(path))
    backend = _byte_level(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    return OFATokenizer(_add_ofa_tokens(backend, num_codes, num_bins))


def _read_ofa_files(root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2 token strings numbered by fairseq's dict.txt: specials 0..3, dict line k -> 4 + k."""
    gpt2 = {idx: tok for tok, idx in json.loads((root / "encoder.json").read_text("utf-8")).items()}
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for k, line in enumerate((root / "dict.txt").read_text("utf-8").splitlines()):
        symbol = line.split(" ")[0]
        vocab[gpt2[int(symbol)] if symbol.isdigit() else symbol] = len(SPECIALS) + k
    return vocab, _read_merges(root / "vocab.bpe")


def _read_hf_files(root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((root / "vocab.json").read_text("utf-8"))
    return vocab, _read_merges(root / "merges.txt")


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text("utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


def _byte_level(backend: Tokenizer | models.BPE) -> Tokenizer:
    """GPT-2 pre-tokenisation (regex split, bytes to unicode) without an added prefix space."""
    tok = backend if isinstance(backend, Tokenizer) else Tokenizer(backend)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _add_ofa_tokens(tok: Tokenizer, num_codes: int, num_bins: int) -> Tokenizer:
    """Register specials, then append `<mask>`, codes and bins (tokens already in the vocab keep their id)."""
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_special_tokens([AddedToken(MASK, lstrip=True, special=True, normalized=False)])
    for kind, count in (("code", num_codes), ("bin", num_bins)):
        tok.add_tokens([AddedToken(f"<{kind}_{i}>", lstrip=True, rstrip=True, normalized=False)
                        for i in range(count)])
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, num_codes: int = NUM_CODES,
                    num_bins: int = NUM_BINS, min_frequency: int = 1) -> OFATokenizer:
    """Train a byte-level BPE on `texts` (the `trained` layout): specials 0..3, BPE, `<mask>`, codes, bins.

    Each text is seen with a leading space, as OFA encodes it (`" " + caption`). Deterministic.
    """
    tok = _byte_level(models.BPE(unk_token=None))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    with _no_parallelism():
        tok.train_from_iterator(_with_leading_space(texts), trainer=trainer)
    return OFATokenizer(_add_ofa_tokens(tok, num_codes, num_bins))


def _with_leading_space(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield text if text.startswith(" ") else " " + text


@contextmanager
def _no_parallelism() -> Iterator[None]:
    """Train single-threaded so that later DataLoader forks see no used thread pool (no tokenizers warning)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old

