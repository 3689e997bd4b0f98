"""Understanding metrics against hand-computed values: official VQA accuracy, soft score, OFA's Acc@0.5."""
from __future__ import annotations

import math

import pytest
import torch

from ofa.tasks.metrics_understanding import (
    ExactMatchAccuracy,
    GroundingAccuracy,
    VQAAccuracy,
    VQASoftScore,
    box_iou_ofa,
    grounding_hits,
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)


# ---- VQA answer normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("yes.", "yes"),  # a period not inside a number is stripped
    ("3.5", "3.5"),  # ... but kept between digits
    ("hello, world", "hello world"),  # "p " in the text: the punctuation is removed
    ("black/white", "black white"),  # no space around it: replaced by a space
    ("1,000", "1000"),  # a digit,digit comma anywhere: every punctuation is removed
    ("(red)", " red "),  # brackets become spaces
    ("it's", "it's"),  # apostrophes are not punctuation here
])
def test_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The Two dogs", "2 dogs"),  # lower-case, number word, article
    ("an apple", "apple"),
    ("none", "0"),
    ("ten", "10"),
    ("dont know", "don't know"),  # contractions get their apostrophe back
    ("whats   that", "what's that"),
    ("Im", "im"),  # lower-cased before the lookup: the table's capitalised "Im" never matches
])
def test_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


def test_normalize_prediction_strips_whitespace_and_punctuation() -> None:
    assert normalize_vqa_answer("  Two\tdogs. \n") == "2 dogs"


# ---- official VQA accuracy --------------------------------------------------------------------------------
def test_leave_one_out_average() -> None:
    humans = ["yes"] * 3 + ["no"] * 7
    # identical answers at different positions are distinct: each is left out once, alone
    # leave out a "yes" (3 times): 2 matches -> 2/3; leave out a "no" (7 times): 3 matches -> 1
    assert vqa_accuracy("yes", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert vqa_accuracy("no", humans) == pytest.approx(1.0)
    humans = ["yes"] * 2 + ["no"] * 8
    assert vqa_accuracy("yes", humans) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    humans = ["yes"] + ["no"] * 9
    assert vqa_accuracy("yes", humans) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_accuracy("maybe", humans) == 0.0


# The current GT-Vision-Lab/VQA evaluator (vqaEval.py since commit a013f00, 2021-03-11): whitespace is
# stripped from every answer; the prediction and the humans are processed (punctuation, then digits /
# articles / contractions) only when the ten stripped human answers are not all the same.
def test_agreeing_humans_nothing_is_processed() -> None:
    assert vqa_accuracy("2", ["2"] * 10) == pytest.approx(1.0)  # 9 matches in every subset
    assert vqa_accuracy("two", ["2"] * 10) == 0.0  # "two" is not mapped to "2"
    assert vqa_accuracy("the dog", ["dog"] * 10) == 0.0  # the article is not stripped
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # not even lower-cased
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0  # the humans' period stays
    assert vqa_accuracy("yes.", ["yes."] * 10) == pytest.approx(1.0)  # ... and so does the prediction's


def test_whitespace_is_stripped_from_every_answer() -> None:
    assert vqa_accuracy(" 2\n", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("red\tcar", ["red car"] * 10) == pytest.approx(1.0)  # inner tab -> space
    # the humans are compared after stripping: " 2\t" and "2" agree, so nothing is processed -> "two" != "2"
    assert vqa_accuracy("two", ["2"] * 9 + [" 2\t"]) == 0.0
    assert vqa_accuracy("2", ["2"] * 9 + [" 2\t"]) == pytest.approx(1.0)
    # disagreeing humans: "\tred\n" -> "red", 3 " red", 7 "blue\n"
    # leave out a "red" (3 times): 2 matches -> 2/3; leave out a "blue" (7 times): 3 matches -> 1
    # mean = (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10 = 0.9
    assert vqa_accuracy("\tred\n", [" red"] * 3 + ["blue\n"] * 7) == pytest.approx(0.9)


def test_disagreeing_humans_number_words_in_both() -> None:
    # prediction "two" -> "2"; humans 4 "2", 6 "3": every subset has 3 or 4 matches -> 1
    assert vqa_accuracy("two", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("Two.", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)  # period, case, number word
    # the humans' number words become digits too: all ten are "2" after processing
    assert vqa_accuracy("2", ["two"] * 9 + ["2"]) == pytest.approx(1.0)
    # humans "three", "three", "3", 7 x "4" -> 3 x "3", 7 x "4"
    # leave out a "3" (3 times): 2 matches -> 2/3; leave out a "4" (7 times): 3 matches -> 1
    # mean = (3 * 2/3 + 7 * 1) / 10 = 9/10 = 0.9
    assert vqa_accuracy("3", ["three"] * 2 + ["3"] + ["4"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("none", ["0", "zero"] + ["1"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6


def test_disagreeing_humans_articles_in_both() -> None:
    # "A dog" -> "dog"; humans "dog", "dog", "the dog", 7 x "cat" -> 3 x "dog", 7 x "cat"
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("A dog", ["dog"] * 2 + ["the dog"] + ["cat"] * 7) == pytest.approx(0.9)
    # one "apple" among 9 "pear": leave out the apple: 0 matches -> 0; leave out a pear (9 times):
    # 1 match -> 1/3; mean = (0 + 9 * 1/3) / 10 = 3/10 = 0.3
    assert vqa_accuracy("an apple", ["apple"] + ["pear"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("the dog", ["dog"] * 9 + ["a dog"]) == pytest.approx(1.0)  # all "dog"


def test_disagreeing_humans_punctuation_and_contractions_in_both() -> None:
    # humans "yes." -> "yes" (9 of them): every subset has >= 8 matches
    assert vqa_accuracy("yes", ["yes."] * 9 + ["no"]) == pytest.approx(1.0)
    # "Yes!" -> "yes " -> "yes"; 2 "yes", 8 "no": leave out a "yes" (2 times): 1 match -> 1/3;
    # leave out a "no" (8 times): 2 matches -> 2/3; mean = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 0.6
    assert vqa_accuracy("Yes!", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    # "black/white" -> "black white" in the humans as well
    assert vqa_accuracy("black and white", ["black/white"] * 3 + ["gray"] * 7) == 0.0  # "and" stays
    assert vqa_accuracy("black white", ["black/white"] * 3 + ["gray"] * 7) == pytest.approx(0.9)
    # "isnt" -> "isn't" (contraction table), humans already "isn't": (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("isnt", ["isn't"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_metric_accumulates() -> None:
    metric = VQAAccuracy()
    metric.update(["yes", "no"], [["yes"] * 3 + ["no"] * 7, ["yes"] * 10])
    metric.update(["2", "two", "two"], [["2"] * 10, ["2"] * 10, ["2"] * 4 + ["3"] * 6])
    # 0.9, 0, then 1 (agreeing, equal), 0 (agreeing, "two" not processed), 1 (disagreeing, "two" -> "2")
    assert metric.compute().item() == pytest.approx((0.9 + 0.0 + 1.0 + 0.0 + 1.0) / 5)


def test_vqa_accuracy_without_data_is_nan() -> None:
    metric = VQAAccuracy()
    metric.update([], [])
    assert math.isnan(metric.compute().item())


def test_vqa_soft_score() -> None:
    metric = VQASoftScore()
    metric.update(["two", "red"], [{"two": 1.0, "2": 0.3}, {"orange": 1.0, "red": 0.3}])
    metric.update(["cat"], [{"dog": 1.0}])
    assert metric.compute().item() == pytest.approx((1.0 + 0.3 + 0.0) / 3)


# ---- grounding ---------------------------------------------------------------------------------------------
def _hit(pred: list[float], gt: list[float]) -> bool:
    return bool(grounding_hits(torch.tensor([pred]), torch.tensor([gt]))[0])


def test_iou_identical_and_partial() -> None:
    iou, nonempty = box_iou_ofa(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]),
                                torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]]))
    assert iou[0].item() == pytest.approx(100 / (100 + 1e-6))
    assert iou[1].item() == pytest.approx(50 / 150)  # overlap 5x10, union 150
    assert nonempty.tolist() == [True, True]
    assert _hit([0, 0, 10, 10], [0, 0, 10, 10])
    assert not _hit([0, 0, 10, 10], [5, 0, 15, 10])


def test_touching_boxes_miss() -> None:
    assert not _hit([0, 0, 10, 10], [10, 0, 20, 10])  # shared edge: intersection width 0


def test_disjoint_boxes_with_positive_product_miss() -> None:
    # width and height of the "intersection" are both -10: their product is +100 and IoU = 100/100 = 1,
    # which is why OFA also requires a positive width and height
    iou, nonempty = box_iou_ofa(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[20.0, 20, 30, 30]]))
    assert iou.item() == pytest.approx(1.0)
    assert not nonempty.item()
    assert not _hit([0, 0, 10, 10], [20, 20, 30, 30])


def test_zero_width_prediction_misses() -> None:
    assert not _hit([5, 0, 5, 10], [0, 0, 10, 10])


def test_containment_and_the_epsilon_at_exactly_half() -> None:
    assert _hit([0, 0, 10, 6], [0, 0, 10, 10])  # contained, IoU 60/100
    assert _hit([2, 2, 8, 8], [1, 1, 9, 9])  # contained, IoU 36/64
    # IoU exactly 1/2 falls just below 0.5 because of the +1e-6 in the union
    assert not _hit([0, 0, 10, 5], [0, 0, 10, 10])
    assert _hit([0, 0, 10, 10], [0, 0, 10, 6])  # the other way round: 60/100


def test_grounding_accuracy_metric() -> None:
    metric = GroundingAccuracy()
    metric.update(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10]]))
    metric.update(torch.tensor([[0.0, 0, 10, 6], [0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]))
    assert metric.compute().item() == pytest.approx(2 / 4)
    assert metric.count.item() == 4


def test_exact_match_accuracy() -> None:
    metric = ExactMatchAccuracy()
    metric.update(["yes", "no", "maybe"], ["yes", "yes", "maybe"])
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_states_are_summed_across_processes() -> None:
    metric = VQASoftScore()
    assert metric._reductions["total"].__name__ == "dim_zero_sum"
    assert metric._reductions["count"].__name__ == "dim_zero_sum"
