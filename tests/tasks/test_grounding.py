"""GroundingTask: prompt, S×S resize, box quantisation round trip, bin-constrained decoding, Acc@0.5."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from PIL import Image
from torch import Tensor

from ofa.datamodules.collate import collate
from synthetic_eval import evaluate_on_synthetic
from ofa.tasks.grounding import BinConstraint, GroundingConfig, GroundingTask, dequantize_boxes, quantize_boxes

BOX = [10.0, 5.0, 60.0, 45.0]  # in a 100x50 image


def raw(box: list[float] = BOX, text: str = "The Red-Square") -> dict:
    return {"id": "g1", "__key__": "g1", "image": Image.new("RGB", (100, 50), "white"),
            "refs": [{"text": text, "box": box}]}


@pytest.fixture()
def task(tokenizer) -> GroundingTask:
    return GroundingTask(tokenizer, GroundingConfig(image_size=512, max_image_size=512))


def test_quantisation_by_hand() -> None:
    boxes = torch.tensor([0.0, 512.0, 256.0, 100.0])
    # c / 512 * 999: 0, 999, 499.5 (ties to even: 500), 195.117 -> 195
    assert quantize_boxes(boxes, 512, 1000).tolist() == [0, 999, 500, 195]
    assert quantize_boxes(torch.tensor([-3.0, 600.0, 1.0, 2.0]), 512, 1000).tolist() == [0, 999, 2, 4]
    assert dequantize_boxes(torch.tensor([0, 999, 500]), 512, 1000).tolist() == pytest.approx([0, 512, 500 / 999 * 512])


def test_round_trip_error_is_at_most_half_a_bin() -> None:
    torch.manual_seed(0)
    boxes = torch.rand(200, 4) * 512
    back = dequantize_boxes(quantize_boxes(boxes, 512, 1000), 512, 1000)
    assert (back - boxes).abs().max().item() <= 0.5 * 512 / 999 + 1e-9
    assert torch.equal(quantize_boxes(back, 512, 1000), quantize_boxes(boxes, 512, 1000))  # bins are fixed points


def test_sample_layout(task: GroundingTask, tokenizer) -> None:
    s = task.preprocess(raw(), "val")
    assert tokenizer.decode(s.source.tolist()) == ' which region does the text " the red square " describe?'
    # 100x50 -> 512x512: x * 5.12, y * 10.24 -> [51.2, 51.2, 307.2, 460.8] -> bins [99.9, 99.9, 599.4, 899.1]
    bins = [tokenizer.bin_token(b) for b in (100, 100, 599, 899)]
    assert s.target.tolist() == [*bins, tokenizer.eos]
    assert s.prev_output_tokens.tolist() == [tokenizer.bos, *bins]
    assert tokenizer.decode(s.target.tolist()) == "<bin_100> <bin_100> <bin_599> <bin_899>"
    assert s.patch_image.shape == (3, 512, 512) and s.decoder_prompt.tolist() == [tokenizer.bos]
    assert s.meta == {"text": "the red square", "box": BOX, "width": 100, "height": 50,
                         "w_ratio": 5.12, "h_ratio": 10.24}
    assert s.constraint_mask is None


def test_samples_without_refs_are_skipped(task: GroundingTask) -> None:
    assert task.preprocess({"id": "x", "image": Image.new("RGB", (8, 8)), "captions": ["a"]}, "train") is None


def test_bin_constraint() -> None:
    c = BinConstraint(bin_offset=100, num_bins=5, eos=2)
    assert c.next_tokens([0]) == [100, 101, 102, 103, 104]
    assert c.next_tokens([0, 100, 101, 104]) == [100, 101, 102, 103, 104]
    assert c.next_tokens([0, 100, 101, 104, 103]) == [2]


@dataclass
class ToyEncoderOut:
    wanted: Tensor  # (B, 4) token ids each sample "wants" to emit

    def index_select(self, order: Tensor) -> "ToyEncoderOut":
        return ToyEncoderOut(self.wanted.index_select(0, order))


class ToyCache:
    def index_select(self, order: Tensor) -> "ToyCache":
        return self


class BinModel(torch.nn.Module):
    """Prefers token wanted[t] at step t (then </s>), with an even stronger pull towards `distractor`."""

    def __init__(self, wanted: Tensor, vocab: int, eos: int, distractor: int) -> None:
        super().__init__()
        self.wanted, self.vocab, self.eos, self.distractor = wanted, vocab, eos, distractor

    def encode(self, src_tokens: Tensor, patch_images=None, patch_masks=None) -> ToyEncoderOut:
        return ToyEncoderOut(self.wanted[: src_tokens.size(0)])

    def new_cache(self) -> ToyCache:
        return ToyCache()

    def decode(self, prev: Tensor, enc: ToyEncoderOut, code_masks=None, cache=None) -> Tensor:
        t = prev.size(1) - 1  # tokens generated so far
        logits = torch.zeros(prev.size(0), 1, self.vocab)
        logits[:, 0, self.distractor] = 10.0  # a text token: the bin constraint must rule it out
        if t < 4:  # the generator passes one encoder row per sample and `beam` target rows per sample
            wanted = enc.wanted.repeat_interleave(prev.size(0) // enc.wanted.size(0), dim=0)
            logits[torch.arange(prev.size(0)), 0, wanted[:, t]] = 5.0
        else:
            logits[:, 0, self.eos] = 5.0
        return logits


def test_decoding_and_accuracy_by_hand(task: GroundingTask, tokenizer) -> None:
    samples = [task.preprocess(raw(), "val"), task.preprocess(raw([50.0, 25.0, 100.0, 50.0]), "val")]
    batch = collate(samples, tokenizer.pad)
    wanted = torch.tensor([[tokenizer.bin_token(b) for b in (100, 100, 599, 899)],
                           [tokenizer.bin_token(b) for b in (0, 0, 200, 200)]])
    model = BinModel(wanted, len(tokenizer), tokenizer.eos, distractor=tokenizer.encode(" the")[0])
    metrics = task.build_metrics()
    rows = task.evaluate(model, batch, metrics)
    # bin / 999 * 512, then x / 5.12 and y / 10.24
    expected0 = [100 / 999 * 100, 100 / 999 * 50, 599 / 999 * 100, 899 / 999 * 50]
    assert rows[0]["box"] == pytest.approx(expected0)  # ≈ [10.01, 5.01, 59.96, 44.99]: IoU ≈ 0.998
    assert rows[1]["box"] == pytest.approx([0, 0, 200 / 999 * 100, 200 / 999 * 50])  # no overlap with the gt
    assert metrics["acc"].compute().item() == pytest.approx(0.5)


def test_without_the_constraint_the_distractor_wins(tokenizer) -> None:
    task = GroundingTask(tokenizer, GroundingConfig(image_size=64, max_image_size=64, constrain_to_bins=False))
    batch = collate([task.preprocess(raw(), "val")], tokenizer.pad)
    distractor = tokenizer.encode(" the")[0]
    model = BinModel(torch.tensor([[tokenizer.bin_token(1)] * 4]), len(tokenizer), tokenizer.eos, distractor)
    assert task.hypothesis_bins(torch.tensor([distractor, tokenizer.eos])).tolist() == [0, 0, 0, 0]
    assert task.predict_boxes(model, batch).tolist() == [[0.0, 0.0, 0.0, 0.0]]  # text tokens clamp to bin 0


def test_end_to_end_on_synthetic_samples(tokenizer) -> None:
    task = GroundingTask(tokenizer, GroundingConfig(image_size=64, max_image_size=64))
    rows, metrics = evaluate_on_synthetic(task, tokenizer, 2)
    assert len(rows) == 2 and all(len(r["box"]) == 4 for r in rows)
    assert metrics["acc"].count.item() == 2
