"""VQATask: prompt/target layout, answer choice, trie masks, evaluation (allcand, beam search) and metrics."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from ofa.datamodules.collate import collate
from ofa.datamodules.synthetic import SyntheticConfig, make_sample
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.tasks.candidates import score_candidates
from ofa.tasks.losses import label_smoothed_cross_entropy
from ofa.tasks.vqa import VQAConfig, VQATask
from ofa.tokenizer import build_tokenizer

SHARED = Path(os.environ.get("OFA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
OFA_BPE = SHARED / "fixtures" / "ofa_bpe"
needs_ofa_bpe = pytest.mark.skipif(not (OFA_BPE / "expected_ids.json").exists(), reason=f"no {OFA_BPE}")
ANSWERS = ["yes", "no", "2", "two dogs", "red"]


def raw(answers: dict[str, float] | None = None, **item) -> dict:
    qa = {"question": "Is this person wearing shorts", "answers": answers or {"yes": 1.0, "no": 0.3}, **item}
    return {"id": "img-1", "__key__": "img-1", "image": Image.new("RGB", (80, 60), "red"), "vqa": [qa]}


def synthetic_raw(index: int) -> dict:
    record, jpeg = make_sample(SyntheticConfig(image_size=64), "val", index)
    return {**record, "__key__": record["id"], "image": Image.open(io.BytesIO(jpeg)).convert("RGB")}


@pytest.fixture()
def task(tokenizer) -> VQATask:
    return VQATask(tokenizer, VQAConfig(image_size=32, answers=ANSWERS))


def test_prev_output_layout(task: VQATask, tokenizer) -> None:
    s = task.preprocess(raw(), "val")
    q, a = tokenizer.encode(" is this person wearing shorts?"), tokenizer.encode(" yes")
    bos, eos, pad = tokenizer.bos, tokenizer.eos, tokenizer.pad
    assert tokenizer.decode(s.source.tolist()) == " is this person wearing shorts?"  # no instruction
    assert s.source.tolist() == [bos, *q, eos]
    assert s.decoder_prompt.tolist() == [bos, *q]
    assert s.prev_output_tokens.tolist() == [bos, *q, *a]
    assert s.target.tolist() == [pad] * len(q) + [*a, eos]
    assert s.patch_image.shape == (3, 32, 32) and s.patch_mask
    assert s.task == "vqa" and s.meta["answer"] == "yes" and s.meta["answers"] == {"yes": 1.0, "no": 0.3}


@needs_ofa_bpe
def test_exact_ids_with_ofa_vocabulary() -> None:
    expected = json.loads((OFA_BPE / "expected_ids.json").read_text())["examples"][1]
    assert expected["text"] == " is this person wearing shorts?"
    tok = build_tokenizer("ofa", OFA_BPE)
    s = VQATask(tok, VQAConfig(image_size=16, answers=ANSWERS)).preprocess(raw(), "val")
    q = expected["fairseq_dict_ids"]  # [16, 42, 621, 2498, 13344, 116]
    assert s.source.tolist() == [0, *q, 2]
    assert s.prev_output_tokens.tolist()[: len(q) + 1] == [0, *q]
    assert s.target.tolist()[: len(q)] == [1] * len(q) and s.target.tolist()[-1] == 2


def test_highest_confidence_answer_is_the_target(task: VQATask) -> None:
    s = task.preprocess(raw({"two dogs": 0.6, "2": 1.0, "zebra": 0.9}), "train")
    assert s.meta["answer"] == "2" and s.conf == 1.0


def test_training_keeps_only_candidate_answers(task: VQATask) -> None:
    s = task.preprocess(raw({"zebra": 1.0, "red": 0.3}), "train")
    assert s.meta["answer"] == "red" and s.conf == pytest.approx(0.3)
    s = task.preprocess(raw({"zebra": 1.0, "red": 0.3}), "val")  # evaluation keeps the true best
    assert s.meta["answer"] == "zebra" and s.conf == 1.0
    assert task.preprocess(raw({"zebra": 1.0}), "train") is None


def test_trie_constraint_mask(task: VQATask, tokenizer) -> None:
    s = task.preprocess(raw({"two dogs": 1.0}), "train")
    mask, target = s.constraint_mask, s.target
    assert mask.shape == (target.numel(), len(tokenizer))
    n_prompt = int(target.eq(tokenizer.pad).sum())
    assert not mask[:n_prompt].any()  # question positions: all False
    first = {tokenizer.encode(" " + a)[0] for a in ANSWERS}
    assert set(mask[n_prompt].nonzero().squeeze(1).tolist()) == first
    two_dogs = tokenizer.encode(" two dogs")
    for j in range(1, len(two_dogs)):  # along the path of "two dogs": the one continuation
        assert mask[n_prompt + j].nonzero().squeeze(1).tolist() == [two_dogs[j]]
    assert mask[-1].nonzero().squeeze(1).tolist() == [tokenizer.eos]
    assert all(mask[i, t] for i, t in enumerate(target.tolist()) if t != tokenizer.pad)  # targets allowed


def test_add_object(tokenizer) -> None:
    task = VQATask(tokenizer, VQAConfig(image_size=16, answers=ANSWERS, add_object=True, max_object_length=2))
    sample = {**raw(), "objects": ["person", "shorts", "ball"]}
    s = task.preprocess(sample, "val")
    assert tokenizer.decode(s.source.tolist()) == " is this person wearing shorts? object: person shorts"
    assert s.decoder_prompt.tolist() == s.source.tolist()[:-1]  # objects are part of the decoder prompt
    s = task.preprocess({**raw(), "objects": [{"color": "red"}]}, "val")  # structured objects are not labels
    assert tokenizer.decode(s.source.tolist()) == " is this person wearing shorts?"


def test_samples_without_vqa_are_skipped(task: VQATask) -> None:
    assert task.preprocess({"id": "x", "image": Image.new("RGB", (8, 8)), "captions": ["a"]}, "train") is None
    assert task.preprocess({**raw(), "image": None}, "train") is None


def test_candidates_from_the_dataset_file(tokenizer, synthetic_data_dir: Path) -> None:
    path = synthetic_data_dir / "answers.json"
    task = VQATask(tokenizer, VQAConfig(answers_file=str(path)))
    assert task.candidates.answers == json.loads(path.read_text())
    with pytest.raises(ValueError, match="answers_file"):
        _ = VQATask(tokenizer, VQAConfig()).candidates
    with pytest.raises(ValueError, match="inference"):
        VQATask(tokenizer, VQAConfig(inference="greedy"))


def test_metrics_from_predictions(task: VQATask, tokenizer) -> None:
    humans = ["yes"] * 3 + ["no"] * 7
    samples = [task.preprocess(raw({"yes": 1.0, "no": 0.3}, human_answers=humans), "val"),
               task.preprocess(raw({"2": 1.0}), "val")]
    batch = collate(samples, tokenizer.pad)
    task.predict = lambda model, batch: ["no", "2"]
    metrics = task.build_metrics()
    rows = task.evaluate(None, batch, metrics)
    assert [r["prediction"] for r in rows] == ["no", "2"]
    assert metrics["score"].compute().item() == pytest.approx((0.3 + 1.0) / 2)
    assert metrics["acc"].compute().item() == pytest.approx(1.0)  # only the sample with human answers


@pytest.fixture(scope="module")
def nano(tokenizer) -> OFAModel:
    torch.manual_seed(0)
    return OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer))).eval()


def test_end_to_end_on_synthetic_samples(tokenizer, synthetic_data_dir: Path, nano: OFAModel) -> None:
    task = VQATask(tokenizer, VQAConfig(image_size=64, answers_file=str(synthetic_data_dir / "answers.json")))
    batch = collate([task.preprocess(synthetic_raw(i), "train") for i in range(3)], tokenizer.pad)
    logits = nano(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])
    loss = label_smoothed_cross_entropy(logits, batch["target"], 0.1, tokenizer.pad, batch["conf"],
                                        batch["constraint_masks"])
    assert torch.isfinite(loss.loss) and loss.ntokens == batch["ntokens"]
    metrics = task.build_metrics()
    rows = task.evaluate(nano, batch, metrics)
    assert all(r["prediction"] in task.candidates for r in rows)
    assert metrics["score"].count.item() == 3


def test_beam_search_emits_candidates_no_better_than_allcand(tokenizer, nano: OFAModel) -> None:
    task = VQATask(tokenizer, VQAConfig(image_size=64, answers=ANSWERS))
    batch = collate([task.preprocess(raw(), "val"), task.preprocess(raw({"red": 1.0}, question="what color?"), "val")],
                    tokenizer.pad)
    allcand = task.predict(nano, batch)
    beam = task.beam_search(nano, batch)
    assert all(p in ANSWERS for p in beam)
    enc = nano.encode(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
    scores = score_candidates(nano, enc, batch["decoder_prompts"], task.candidates)  # (2, 5)
    for i, (a, b) in enumerate(zip(allcand, beam)):
        assert scores[i, task.candidates.index[a]] >= scores[i, task.candidates.index[b]] - 1e-5
