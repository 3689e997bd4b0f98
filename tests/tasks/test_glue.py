"""GLUE tasks (`ofa.tasks.glue`): OFA's prompts and answer words with the official BPE, the `src` / `prev_output`
/ `none` layouts (answer as the last target, no `</s>`), label mapping, the answer-word check, prediction at the
last decoder position, and the metrics each task reports."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ofa.errors import RunConfigError
from ofa.tasks import TASKS
from ofa.tasks.glue import GlueTask
from ofa.tokenizer import build_tokenizer

OFA_BPE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ofa_bpe"
pytestmark = pytest.mark.skipif(not OFA_BPE.is_dir(), reason="needs ../shared/fixtures/ofa_bpe")


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("ofa", OFA_BPE)


def make(name: str, tokenizer, **cfg) -> GlueTask:
    cls = TASKS[name]
    return cls(tokenizer, cls.config_class(**cfg))


# Raw sample -> the GPT-2 tokens of OFA's prompt, written out by hand from the prompt table of spec §3.8
# (sentences lower-cased; QNLI puts the sentence first, the question second), and the answer token.
CASES = {
    "cola": ({"text": "The cat sat on the mat.", "label": "1"},
             "Ġis Ġthe Ġtext Ġ\" Ġthe Ġcat Ġsat Ġon Ġthe Ġmat . Ġ\" Ġgram matically Ġcorrect ?", "Ġyes"),
    "sst2": ({"text": "A GREAT film", "label": "0"},
             "Ġis Ġthe Ġsentiment Ġof Ġtext Ġ\" Ġa Ġgreat Ġfilm Ġ\" Ġpositive Ġor Ġnegative ?", "Ġnegative"),
    "mnli": ({"text": "A man sleeps", "text_b": "A person rests", "label": "0"},
             "Ġcan Ġtext 1 Ġ\" Ġa Ġman Ġsleeps Ġ\" Ġimply Ġtext 2 Ġ\" Ġa Ġperson Ġrests Ġ\" ?", "Ġmaybe"),
    "rte": ({"text": "A man sleeps", "text_b": "A person rests", "label": "entailment"},
            "Ġcan Ġtext 1 Ġ\" Ġa Ġman Ġsleeps Ġ\" Ġimply Ġtext 2 Ġ\" Ġa Ġperson Ġrests Ġ\" ?", "Ġyes"),
    "qnli": ({"text": "who sleeps?", "text_b": "A man sleeps", "label": "not_entailment"},
             "Ġdoes Ġ\" Ġa Ġman Ġsleeps Ġ\" Ġcontain Ġthe Ġanswer Ġto Ġquestion Ġ\" Ġwho Ġsleeps ? Ġ\" ?", "Ġno"),
    "mrpc": ({"text": "A man sleeps", "text_b": "A man naps", "label": "1"},
             "Ġdoes Ġtext 1 Ġ\" Ġa Ġman Ġsleeps Ġ\" Ġand Ġtext 2 Ġ\" Ġa Ġman Ġn aps Ġ\" Ġhave Ġthe Ġsame Ġsemantics ?",
             "Ġyes"),
    "qqp": ({"text": "who sleeps?", "text_b": "who naps?", "label": "0"},
            "Ġis Ġquestion Ġ\" Ġwho Ġsleeps ? Ġ\" Ġand Ġquestion Ġ\" Ġwho Ġn aps ? Ġ\" Ġequivalent ?", "Ġno"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prompt_and_answer_ids_with_the_official_bpe(name: str, bpe) -> None:
    raw, tokens, answer = CASES[name]
    sample = make(name, bpe).preprocess({"id": "x", **raw}, "train")
    expected = [bpe.bos, *(bpe.token_to_id(t) for t in tokens.split()), bpe.eos]
    assert sample.source.tolist() == expected
    # prompt_type src: the decoder reads the whole source; only the last target (the answer) counts
    assert sample.prev_output_tokens.tolist() == expected
    assert sample.target.tolist() == [bpe.pad] * (len(expected) - 1) + [bpe.token_to_id(answer)]
    mask = sample.constraint_mask
    assert mask.shape == (len(expected), len(bpe)) and not mask[:-1].any()
    allowed = {bpe.token_to_id("Ġ" + a) for a in TASKS[name](bpe, TASKS[name].config_class()).answers}
    assert set(mask[-1].nonzero().flatten().tolist()) == allowed


def test_answer_words_are_ofa_dictionary_ids(bpe) -> None:
    """Spot check against fairseq ids: " yes" = 4420, " no" = 117 in OFA's dict (GPT-2 -> dict.txt order)."""
    task = make("cola", bpe)
    assert task.answer_ids.tolist() == [117, 4420]


def test_prompt_types_and_truncation(bpe) -> None:
    raw = {"id": "x", "text": "One two three four five", "label": "yes"}
    src = make("cola", bpe, max_src_length=3).preprocess(raw, "val")
    assert bpe.decode(src.source.tolist()) == ' is the text " one two three " grammatically correct?'
    prev_output = make("cola", bpe, prompt_type="prev_output").preprocess(raw, "val")
    assert prev_output.prev_output_tokens.tolist() == prev_output.source[:-1].tolist()
    assert prev_output.target.tolist()[-1] == bpe.token_to_id("Ġyes")
    none = make("cola", bpe, prompt_type="none", use_constraint=False).preprocess(raw, "val")
    assert none.prev_output_tokens.tolist() == [bpe.bos]
    assert none.target.tolist() == [bpe.token_to_id("Ġyes")] and none.constraint_mask is None


def test_labels_map_and_unknown_samples_are_skipped(bpe) -> None:
    mnli = make("mnli", bpe, labels={"neutral-ish": "maybe"})
    base = {"id": "x", "text": "a", "text_b": "b"}
    for label, word in [("1", "yes"), ("2", "no"), ("contradiction", "no"), ("maybe", "maybe"),
                        ("neutral-ish", "maybe")]:
        assert mnli.preprocess({**base, "label": label}, "train").meta["answer"] == word
    assert mnli.preprocess({**base, "label": "7"}, "train") is None
    assert mnli.preprocess({"id": "x", "text": "a", "label": "1"}, "train") is None  # a pair task needs text_b
    assert make("sst2", bpe).preprocess({"id": "x", "label": "1"}, "train") is None


def test_answer_words_must_be_single_tokens(tokenizer) -> None:
    """The image world's small BPE splits " negative": OFA asserts one token per answer; we refuse on one line."""
    if len(tokenizer.encode(" negative")) == 1:
        pytest.skip("this tokenizer happens to have the word")
    with pytest.raises(RunConfigError, match="sst2: every answer word must be one token"):
        make("sst2", tokenizer)


class LastPositionModel(torch.nn.Module):
    """decode() puts the largest logit on token `favour[b]` at row b's last non-pad position only."""

    def __init__(self, favour: list[int], decoy: int, pad: int, vocab: int) -> None:
        super().__init__()
        self.favour, self.decoy, self.pad, self.vocab = favour, decoy, pad, vocab

    def encode(self, src_tokens, patch_images=None, patch_masks=None):
        return SimpleNamespace(rows=src_tokens.size(0))

    def decode(self, prev, encoder_out):
        logits = torch.zeros(*prev.shape, self.vocab)
        last = prev.ne(self.pad).sum(1) - 1
        for b, tok in enumerate(self.favour):
            logits[b, :, 5] = 50.0  # a non-answer token wins everywhere: the answer mask must ignore it
            logits[b, last[b], tok] = 10.0
            logits[b, last[b] - 1, self.decoy] = 20.0  # an answer word one position too early
        return logits


def test_predict_reads_the_last_decoder_position_and_metrics(bpe) -> None:
    from ofa.datamodules.collate import collate

    task = make("cola", bpe)
    samples = [task.preprocess({"id": str(i), "text": text, "label": label}, "val")
               for i, (text, label) in enumerate([("short", "yes"), ("a much longer sentence here", "no")])]
    batch = collate(samples, bpe.pad)
    yes, no = bpe.token_to_id("Ġyes"), bpe.token_to_id("Ġno")
    model = LastPositionModel([no, no], yes, bpe.pad, len(bpe))
    metrics = task.build_metrics()
    rows = task.evaluate(model, batch, metrics)
    assert [r["prediction"] for r in rows] == ["no", "no"]
    values = metrics["glue"].compute()
    assert set(values) == {"acc", "mcc"} and float(values["acc"]) == pytest.approx(0.5)
    model.favour, model.decoy = [yes, no], no
    assert task.predict(model, batch) == ["yes", "no"]


@pytest.mark.parametrize("name,keys", [("cola", {"acc", "mcc"}), ("mrpc", {"acc", "f1"}), ("qqp", {"acc", "f1"}),
                                       ("sst2", {"acc"}), ("qnli", {"acc"}), ("rte", {"acc"})])
def test_metrics_per_task(name: str, keys: set, bpe) -> None:
    metric = make(name, bpe).build_metrics()["glue"]
    metric.update(["yes", "no"] if name != "sst2" else ["positive", "negative"],
                  ["yes", "yes"] if name != "sst2" else ["positive", "positive"])
    assert set(metric.compute()) == keys
    assert make(name, bpe).monitor == ("mcc" if name == "cola" else "acc")


def test_mnli_is_three_way_accuracy(bpe) -> None:
    metrics = make("mnli", bpe).build_metrics()
    metrics["acc"].update(["yes", "maybe", "no"], ["yes", "no", "no"])
    assert float(metrics["acc"].compute()) == pytest.approx(2 / 3)
