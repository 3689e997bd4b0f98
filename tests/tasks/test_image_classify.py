"""ImageClassifyTask: prompt ids, target, class-name trie, candidate file, top-1 accuracy."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ofa.datamodules.collate import collate
from synthetic_eval import evaluate_on_synthetic
from ofa.tasks.image_classify import ImageClassifyConfig, ImageClassifyTask
from ofa.tokenizer import build_tokenizer

SHARED = Path(os.environ.get("OFA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
OFA_BPE = SHARED / "fixtures" / "ofa_bpe"
needs_ofa_bpe = pytest.mark.skipif(not (OFA_BPE / "expected_ids.json").exists(), reason=f"no {OFA_BPE}")
CLASSES = ["red circle", "red square", "blue circle"]


def raw(label: str = "red square") -> dict:
    return {"id": "c1", "__key__": "c1", "image": Image.new("RGB", (40, 30), "red"), "label": label}


@pytest.fixture()
def task(tokenizer) -> ImageClassifyTask:
    return ImageClassifyTask(tokenizer, ImageClassifyConfig(image_size=32, classes=CLASSES))


@needs_ofa_bpe
def test_exact_source_ids_with_ofa_vocabulary() -> None:
    expected = json.loads((OFA_BPE / "expected_ids.json").read_text())["examples"][0]
    assert expected["text"] == " what does the image describe?"
    s = ImageClassifyTask(build_tokenizer("ofa", OFA_BPE), ImageClassifyConfig(image_size=16, classes=CLASSES)
                          ).preprocess(raw(), "val")
    assert s.source.tolist() == [0, 99, 473, 5, 2274, 6190, 116, 2]


def test_layout_and_mask(task: ImageClassifyTask, tokenizer) -> None:
    s = task.preprocess(raw(), "train")
    name = tokenizer.encode(" red square")
    assert tokenizer.decode(s.source.tolist()) == " what does the image describe?"
    assert s.decoder_prompt.tolist() == [tokenizer.bos]  # prompt_type none
    assert s.prev_output_tokens.tolist() == [tokenizer.bos, *name]
    assert s.target.tolist() == [*name, tokenizer.eos]
    mask = s.constraint_mask
    assert mask.shape == (len(name) + 1, len(tokenizer))
    allowed = [set(row.nonzero().squeeze(1).tolist()) for row in mask]
    assert allowed[0] == {tokenizer.encode(" " + c)[0] for c in CLASSES}
    assert allowed[-1] == {tokenizer.eos}
    assert all(t in a for t, a in zip(s.target.tolist(), allowed))


def test_unknown_class_skipped_in_training_only(task: ImageClassifyTask) -> None:
    assert task.preprocess(raw("green triangle"), "train") is None
    assert task.preprocess(raw("green triangle"), "val").meta["answer"] == "green triangle"
    assert task.preprocess({"id": "x", "image": Image.new("RGB", (8, 8))}, "train") is None


def test_classes_from_the_dataset_file(tokenizer, synthetic_data_dir: Path) -> None:
    path = synthetic_data_dir / "classes.json"
    task = ImageClassifyTask(tokenizer, ImageClassifyConfig(classes_file=str(path)))
    assert task.candidates.answers == json.loads(path.read_text())
    with pytest.raises(ValueError, match="classes_file"):
        _ = ImageClassifyTask(tokenizer, ImageClassifyConfig()).candidates


def test_accuracy(task: ImageClassifyTask, tokenizer) -> None:
    batch = collate([task.preprocess(raw("red square"), "val"), task.preprocess(raw("blue circle"), "val")],
                    tokenizer.pad)
    task.predict = lambda model, batch: ["red square", "red circle"]
    metrics = task.build_metrics()
    task.evaluate(None, batch, metrics)
    assert metrics["acc"].compute().item() == pytest.approx(0.5)


def test_end_to_end_on_synthetic_samples(tokenizer, synthetic_data_dir: Path) -> None:
    task = ImageClassifyTask(tokenizer, ImageClassifyConfig(image_size=64,
                                                            classes_file=str(synthetic_data_dir / "classes.json")))
    rows, metrics = evaluate_on_synthetic(task, tokenizer, 3)
    assert all(r["prediction"] in task.candidates for r in rows) and metrics["acc"].count.item() == 3
