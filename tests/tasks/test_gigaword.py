"""Gigaword summarisation (`ofa.tasks.gigaword`): OFA's source/target ids with the official BPE, word and
token limits, `<unk>`, decoder-input noise (training only, never the targets) and ROUGE evaluation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa.tasks.gigaword import GigawordConfig, GigawordTask
from ofa.tokenizer import build_tokenizer

OFA_BPE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ofa_bpe"
pytestmark = pytest.mark.skipif(not OFA_BPE.is_dir(), reason="needs ../shared/fixtures/ofa_bpe")


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("ofa", OFA_BPE)


def ids(bpe, tokens: str) -> list[int]:
    return [bpe.token_to_id(t) for t in tokens.split()]


RAW = {"id": "g1", "text": "Police arrested five anti-nuclear protesters", "summary": "Five protesters ARRESTED"}


def test_source_and_target_ids(bpe) -> None:
    s = GigawordTask(bpe, GigawordConfig()).preprocess(RAW, "val")
    # pre_caption: lower-case, "-" -> " "; OFA's prompt around it
    prompt = ids(bpe, 'Ġwhat Ġis Ġthe Ġsummary Ġof Ġarticle Ġ" Ġpolice Ġarrested Ġfive Ġanti Ġnuclear Ġprotesters Ġ" ?')
    assert s.source.tolist() == [bpe.bos, *prompt, bpe.eos]
    target = ids(bpe, "five Ġprotesters Ġarrested")  # no leading space before the first word, as OFA
    assert s.prev_output_tokens.tolist() == [bpe.bos, *target]  # validation: no noise
    assert s.target.tolist() == [*target, bpe.eos]
    assert s.meta["reference"] == "five protesters arrested" and s.patch_mask is False


def test_limits_and_unk(bpe) -> None:
    cfg = GigawordConfig(max_src_length=10, max_tgt_length=2)
    s = GigawordTask(bpe, cfg).preprocess({"id": "g", "text": "a <unk> b c d e f g h i j k", "summary": "x <unk> z"},
                                          "val")
    assert len(s.source) == 10 + 2  # the prompted source is cut to max_src_length BPE tokens (+ <s> </s>)
    assert bpe.decode(s.source.tolist()).startswith(' what is the summary of article " a unk')
    assert bpe.decode(s.target.tolist()) == "x unk"  # two words, <unk> -> unk
    assert GigawordTask(bpe, cfg).preprocess({"id": "g", "text": "a"}, "val") is None


def test_noise_hits_the_decoder_input_only_in_training(bpe) -> None:
    task = GigawordTask(bpe, GigawordConfig(noise_ratio=0.2))
    raw = {"id": "g", "text": "a b", "summary": " ".join(["word"] * 60)}
    clean = task.preprocess(raw, "val")
    changed = total = 0
    for _ in range(40):
        s = task.preprocess(raw, "train")
        assert torch.equal(s.target, clean.target) and s.prev_output_tokens[0] == bpe.bos
        diff = s.prev_output_tokens[1:].ne(clean.prev_output_tokens[1:])
        changed, total = changed + int(diff.sum()), total + diff.numel()
        assert bool((s.prev_output_tokens[1:][diff] < bpe.code_offset).all())  # text ids (and <mask>) only
    assert 0.17 < changed / total < 0.23
    assert torch.equal(task.preprocess(raw, "val").prev_output_tokens, clean.prev_output_tokens)


def test_evaluate_scores_generated_summaries(bpe) -> None:
    from ofa.datamodules.collate import collate

    class Echo(torch.nn.Module):
        """A fake generator target: the task only needs `generate`; patch it on the task."""

    task = GigawordTask(bpe, GigawordConfig())
    samples = [task.preprocess(RAW, "val"), task.preprocess({**RAW, "id": "g2", "summary": "nothing alike"}, "val")]
    batch = collate(samples, bpe.pad)

    class FakeGenerator:
        model = None

        def generate(self, *args, **kwargs):
            hyp = type("H", (), {"tokens": torch.tensor(ids(bpe, "Ġfive Ġprotesters Ġarrested") + [bpe.eos])})
            return [[hyp], [hyp]]

    task._generator = FakeGenerator()
    task.generator = lambda model: task._generator
    metrics = task.build_metrics()
    rows = task.evaluate(Echo(), batch, metrics)
    assert rows[0]["prediction"] == "five protesters arrested"
    scores = metrics["rouge"].compute()
    assert float(scores["rouge1"]) == pytest.approx(0.5)  # 1.0 for the first sample, 0.0 for the second
    assert float(scores["rougeL"]) == pytest.approx(0.5)
