"""Text infilling (`ofa.tasks.text_infill`): OFA's source layout with the official BPE, the last-256-token
window, masking statistics through the task, deterministic evaluation masks and fresh training masks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa.tasks.text_infill import TextInfillConfig, TextInfillTask
from ofa.tokenizer import build_tokenizer

OFA_BPE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ofa_bpe"
pytestmark = pytest.mark.skipif(not OFA_BPE.is_dir(), reason="needs ../shared/fixtures/ofa_bpe")
TEXT = "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden fence"


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("ofa", OFA_BPE)


def test_source_is_ofas_prefix_around_the_masked_ids(bpe) -> None:
    task = TextInfillTask(bpe, TextInfillConfig())
    s = task.preprocess({"id": "t1", "text": TEXT}, "val")
    text_ids = bpe.encode(" " + TEXT.lower())
    assert s.target.tolist() == [*text_ids, bpe.eos] and s.prev_output_tokens.tolist() == [bpe.bos, *text_ids]
    prefix = bpe.encode(' what is the complete text of " "?')  # OFA: prefix[:-2] + masked + prefix[-2:]
    masked = s.meta["masked"]
    assert s.source.tolist() == [bpe.bos, *prefix[:-2], *masked, *prefix[-2:], bpe.eos]
    assert bpe.mask in masked and len(masked) < len(text_ids)
    kept = [t for t in masked if t != bpe.mask]  # what survives keeps its order
    it = iter(text_ids)
    assert all(any(t == u for u in it) for t in kept)
    assert s.conf == 1.0 and s.meta["text"] == TEXT.lower()


def test_eval_masks_are_fixed_per_sample_and_training_masks_vary(bpe) -> None:
    task = TextInfillTask(bpe, TextInfillConfig(conf=2.0))
    raw = {"id": "t1", "text": TEXT}
    first = task.preprocess(raw, "val")
    assert torch.equal(first.source, task.preprocess(raw, "val").source) and first.conf == 2.0
    assert not torch.equal(first.source, task.preprocess({**raw, "id": "t2"}, "val").source)
    sources = {tuple(task.preprocess(raw, "train").source.tolist()) for _ in range(10)}
    assert len(sources) > 5


def test_the_last_window_of_a_long_text_is_kept(bpe) -> None:
    task = TextInfillTask(bpe, TextInfillConfig(max_text_tokens=8, mask_ratio=0.0))
    s = task.preprocess({"id": "t", "text": TEXT}, "val")
    assert s.target.tolist()[:-1] == bpe.encode(" " + TEXT.lower())[-8:]
    assert s.meta["masked"] == s.target.tolist()[:-1]  # mask_ratio 0: nothing masked


def test_about_thirty_percent_of_words_are_masked(bpe) -> None:
    task = TextInfillTask(bpe, TextInfillConfig())
    words = len(TEXT.split())
    lost = 0
    for i in range(200):
        masked = task.preprocess({"id": f"t{i}", "text": TEXT}, "val").meta["masked"]
        lost += words - sum(1 for t in masked if t != bpe.mask)  # one-token words: each lost token is a word
    # fairseq's budget is ceil(0.3 * words) minus overlaps and the end of the text: ~27 % on average
    assert 0.22 < lost / (200 * words) <= 0.30
