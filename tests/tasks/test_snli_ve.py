"""SNLIVETask: the two prompts, label words, prev_output layout, trie masks, accuracy."""
from __future__ import annotations


import pytest
from PIL import Image

from ofa.datamodules.collate import collate
from synthetic_eval import evaluate_on_synthetic
from ofa.tasks.snli_ve import SNLIVEConfig, SNLIVETask, snli_ve_prompt


def raw(label: str = "entailment") -> dict:
    item = {"hypothesis": "There is a Red-square.", "premise": "A red square on a white table", "label": label}
    return {"id": "e1", "__key__": "e1", "image": Image.new("RGB", (40, 30), "white"), "entailment": [item]}


@pytest.fixture()
def task(tokenizer) -> SNLIVETask:
    return SNLIVETask(tokenizer, SNLIVEConfig(image_size=32))


def test_prompts() -> None:
    assert snli_ve_prompt("h", "p") == ' can image and text1 " p " imply text2 " h "?'
    assert snli_ve_prompt("h", None) == ' does the image describe " h "?'


def test_source_with_and_without_caption(tokenizer) -> None:
    with_caption = SNLIVETask(tokenizer, SNLIVEConfig(image_size=16)).preprocess(raw(), "val")
    assert tokenizer.decode(with_caption.source.tolist()) == (
        ' can image and text1 " a red square on a white table " imply text2 " there is a red square. "?')
    without = SNLIVETask(tokenizer, SNLIVEConfig(image_size=16, add_caption=False)).preprocess(raw(), "val")
    assert tokenizer.decode(without.source.tolist()) == ' does the image describe " there is a red square. "?'


@pytest.mark.parametrize("label, word", [("entailment", "yes"), ("contradiction", "no"), ("neutral", "maybe"),
                                         ("yes", "yes"), ("Maybe", "maybe")])
def test_label_words(task: SNLIVETask, label: str, word: str) -> None:
    assert task.preprocess(raw(label), "train").meta["answer"] == word


def test_unknown_label_and_missing_field_are_skipped(task: SNLIVETask) -> None:
    assert task.preprocess(raw("unsure"), "train") is None
    assert task.preprocess({"id": "x", "image": Image.new("RGB", (8, 8)), "label": "cat"}, "train") is None


def test_prev_output_layout_and_mask(task: SNLIVETask, tokenizer) -> None:
    s = task.preprocess(raw("contradiction"), "train")
    src, answer = s.source.tolist(), tokenizer.encode(" no")
    assert s.decoder_prompt.tolist() == src[:-1]
    assert s.prev_output_tokens.tolist() == src[:-1] + answer
    assert s.target.tolist() == [tokenizer.pad] * (len(src) - 2) + answer + [tokenizer.eos]
    mask, n_prompt = s.constraint_mask, len(src) - 2
    assert mask.shape == (s.target.numel(), len(tokenizer)) and not mask[:n_prompt].any()
    first = {tokenizer.encode(" " + w)[0] for w in ("yes", "no", "maybe")}
    assert set(mask[n_prompt].nonzero().squeeze(1).tolist()) == first
    assert mask[-1].nonzero().squeeze(1).tolist() == [tokenizer.eos]
    assert s.conf == 1.0


def test_accuracy(task: SNLIVETask, tokenizer) -> None:
    batch = collate([task.preprocess(raw("entailment"), "val"), task.preprocess(raw("neutral"), "val")], tokenizer.pad)
    task.predict = lambda model, batch: ["yes", "no"]
    metrics = task.build_metrics()
    rows = task.evaluate(None, batch, metrics)
    assert [(r["prediction"], r["label"]) for r in rows] == [("yes", "yes"), ("no", "maybe")]
    assert metrics["acc"].compute().item() == pytest.approx(0.5)


def test_end_to_end_on_synthetic_samples(tokenizer) -> None:
    task = SNLIVETask(tokenizer, SNLIVEConfig(image_size=64))
    rows, metrics = evaluate_on_synthetic(task, tokenizer, 2)
    assert all(r["prediction"] in ("yes", "no", "maybe") for r in rows) and metrics["acc"].count.item() == 2
