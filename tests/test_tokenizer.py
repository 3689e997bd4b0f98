"""`ofa.tokenizer`: OFA's exact ids (official BPE files), the HF layout, the trained layout, decoding."""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest

from ofa.tokenizer import OFATokenizer, build_tokenizer, train_tokenizer

SHARED = Path(os.environ.get("OFA_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
BPE_DIR = SHARED / "fixtures" / "ofa_bpe"


@pytest.fixture(scope="module")
def ofa_tok() -> OFATokenizer:
    if not (BPE_DIR / "dict.txt").is_file():
        pytest.skip(f"OFA BPE fixtures not found in {BPE_DIR} (set OFA_SHARED_DIR)")
    return build_tokenizer("ofa", BPE_DIR)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((BPE_DIR / "expected_ids.json").read_text())


def test_ofa_layout_matches_fairseq_ids(ofa_tok: OFATokenizer, expected: dict) -> None:
    assert len(ofa_tok) == expected["vocab_size"] == 59457
    for ex in expected["examples"]:
        assert ofa_tok.encode(ex["text"]) == ex["fairseq_dict_ids"]
    special = expected["special"]
    assert (ofa_tok.bos, ofa_tok.pad, ofa_tok.eos, ofa_tok.unk) == (0, 1, 2, 3)
    assert ofa_tok.mask == special["<mask>"]
    assert ofa_tok.code_token(0) == special["<code_0>"] and ofa_tok.code_token(8191) == special["<code_8191>"]
    assert ofa_tok.bin_token(0) == special["<bin_0>"] and ofa_tok.bin_token(999) == special["<bin_999>"]
    assert (ofa_tok.num_codes, ofa_tok.num_bins) == (8192, 1000)


def test_location_tokens_in_text_match_ofa_use_bpe_false(ofa_tok: OFATokenizer) -> None:
    bins = [ofa_tok.bin_token(i) for i in (12, 40, 7, 999)]
    assert ofa_tok.encode("<bin_12> <bin_40> <bin_7> <bin_999>") == bins
    prompt = " what does the region describe? region:"
    assert ofa_tok.encode(prompt + " <bin_12> <bin_40> <bin_7> <bin_999>") == ofa_tok.encode(prompt) + bins
    assert ofa_tok.encode(" <code_3>") == [ofa_tok.code_token(3)]


def test_decode_skips_specials_and_spells_locations(ofa_tok: OFATokenizer) -> None:
    ids = ofa_tok.encode(" a man riding a horse")
    assert ofa_tok.decode([ofa_tok.bos, *ids, ofa_tok.eos, ofa_tok.pad]) == " a man riding a horse"
    mixed = ofa_tok.encode(" region:") + [ofa_tok.bin_token(5), ofa_tok.bin_token(6), ofa_tok.eos]
    assert ofa_tok.decode(mixed) == " region: <bin_5> <bin_6>"
    assert ofa_tok.encode(ofa_tok.decode(mixed)) == mixed[:-1]
    with pytest.raises(ValueError, match="bin index"):
        ofa_tok.bin_token(1000)


def test_hf_layout_gives_the_same_ids(ofa_tok: OFATokenizer, expected: dict, tmp_path: Path) -> None:
    vocab = {ofa_tok.id_to_token(i): i for i in range(ofa_tok.mask + 1)}  # BART's vocab.json
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text((BPE_DIR / "vocab.bpe").read_text("utf-8"), "utf-8")
    hf = build_tokenizer("hf", tmp_path)
    assert len(hf) == len(ofa_tok) and hf.bin_offset == ofa_tok.bin_offset
    for ex in expected["examples"]:
        assert hf.encode(ex["text"]) == ex["fairseq_dict_ids"]


def test_build_is_cached_and_encode_is_cheap(ofa_tok: OFATokenizer) -> None:
    assert build_tokenizer("ofa", BPE_DIR) is ofa_tok
    start = time.perf_counter()
    for _ in range(1000):
        ofa_tok.encode(" what does the image describe?")
    assert time.perf_counter() - start < 0.5  # ~10 us each here


def test_bad_arguments_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("gpt2", tmp_path)
    with pytest.raises(FileNotFoundError, match="dict.txt"):
        build_tokenizer("ofa", tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_tokenizer("trained", tmp_path)


def test_trained_layout_round_trips_and_is_deterministic(tmp_path: Path) -> None:
    texts = ["a red circle above a blue square", "is there a green triangle?", "yes", "no"] * 20
    tok = train_tokenizer(texts, vocab_size=400, num_codes=16, num_bins=10)
    assert (tok.bos, tok.pad, tok.eos, tok.unk) == (0, 1, 2, 3)
    assert (tok.code_offset, tok.bin_offset, len(tok)) == (tok.mask + 1, tok.mask + 17, tok.mask + 27)
    assert len(tok.encode(" a red circle")) == 3  # words learnt with their leading space
    tok.save(tmp_path / "a" / "tokenizer.json")
    train_tokenizer(texts, vocab_size=400, num_codes=16, num_bins=10).save(tmp_path / "b" / "tokenizer.json")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    loaded = build_tokenizer("trained", tmp_path / "a")
    assert (loaded.mask, loaded.num_codes, loaded.num_bins) == (tok.mask, 16, 10)
    text = " is there a green triangle? <bin_3> <bin_9>"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_pickles_for_dataloader_workers(tokenizer: OFATokenizer) -> None:
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.encode(" a red circle") == tokenizer.encode(" a red circle") and len(copy) == len(tokenizer)
