"""OFA's pretraining examples (spec §3.11): per-kind prompts and targets, image-text matching negatives,
boxes and bins after OFA's crops, patch sampling marks, and the negative files."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from PIL import Image

from ofa.errors import RunConfigError
from ofa.tasks.grounding import quantize_boxes
from ofa.tasks.pretrain import PretrainConfig, PretrainTask
from ofa.tasks.pretrain_negatives import Negatives

CAPTION = "a red circle to the left of a blue square"
OBJECTS = ["red circle", "blue square", "green triangle", "yellow circle"]


@pytest.fixture(scope="module")
def negatives() -> Negatives:
    return Negatives(captions=["two shapes", "a green triangle", "an orange square"], objects=OBJECTS,
                     type2ans={"how many": ["0", "1", "2", "3"], "what color": ["red", "blue", "green"],
                               "other": ["0", "1", "2", "3", "red", "blue", "green", "yes", "no"]})


@pytest.fixture(scope="module")
def task(tokenizer, negatives, tmp_path_factory) -> PretrainTask:
    folder = negatives.write(tmp_path_factory.mktemp("neg"))
    return PretrainTask(tokenizer, PretrainConfig(image_size=64, max_image_size=64, sample_patch_num=8,
                                                  neg_sample_dir=str(folder)))


def row(**fields) -> dict:
    return {"id": "r1", "image": Image.new("RGB", (120, 90), (200, 30, 30)), **fields}


def text(tok, ids: torch.Tensor) -> str:
    return tok.decode([i for i in ids.tolist() if i != tok.pad])


def bins_of(tok, ids: torch.Tensor) -> list[int]:
    return [i - tok.bin_offset for i in ids.tolist() if tok.bin_offset <= i < tok.bin_offset + tok.num_bins]


def test_caption_row_gives_caption_and_matching_examples(task, tokenizer) -> None:
    random.seed(0)
    seen = Counter()
    for _ in range(200):
        main, second = task.preprocess(row(captions=[CAPTION], objects=["red circle", "blue square"]), "train")
        assert text(tokenizer, main.source) == " what does the image describe?"
        assert text(tokenizer, main.target) == " " + CAPTION
        assert main.sample_patch_num == second.sample_patch_num == 8 and main.patch_image.shape == (3, 64, 64)
        asked = text(tokenizer, second.source)
        assert asked.startswith(' does the image describe "') and asked.endswith(' "?')
        answer = text(tokenizer, second.target)
        said = asked[len(' does the image describe " '):-len(' "?')]
        if answer == " yes":
            assert said == CAPTION
            seen["yes"] += 1
        else:
            assert answer == " no" and said != CAPTION
            seen["swap" if said.replace("red circle", "").replace("blue square", "") != said else "random"] += 1
    assert seen["yes"] == pytest.approx(100, abs=30)
    swaps = seen["swap"] / (seen["swap"] + seen["random"])  # object swaps with probability 0.4
    assert swaps == pytest.approx(0.4, abs=0.17)


def test_evaluation_gives_the_main_example_only_and_all_patches(task) -> None:
    (main,) = task.preprocess(row(captions=[CAPTION]), "val")
    assert main.sample_patch_num is None


def test_qa_row_weights_by_confidence_and_negates_with_answers_of_its_type(task, tokenizer) -> None:
    random.seed(1)
    qa = {"question": "How many shapes", "answers": {"2": 0.9, "3": 0.3}}
    said = Counter()
    for _ in range(300):
        main, second = task.preprocess(row(vqa=[qa]), "train")
        assert text(tokenizer, main.source) == " how many shapes?" and text(tokenizer, main.target) == " 2"
        assert main.conf == second.conf == pytest.approx(0.9)
        asked = text(tokenizer, second.source)
        assert asked.startswith(' what is the answer to question " how many shapes? ". is "')
        answer = asked.split('. is " ')[1][:-len(' "?')]
        assert (answer == "2") == (text(tokenizer, second.target) == " yes")
        said[answer] += 1
    assert set(said) <= {"0", "1", "2", "3", "red", "blue", "green", "yes", "no"}
    assert said["1"] + said["3"] > said["red"] + said["blue"] + said["green"]  # mostly numbers


def test_negative_answers_follow_ofa(negatives) -> None:
    random.seed(2)
    draws = Counter(negatives.answer("2", 1.0) for _ in range(4000))
    assert "2" not in draws
    assert (draws["1"] + draws["3"]) / 4000 > 0.4  # +-1 when 0.5 < p (and conf > p + 0.1); same type otherwise
    assert not {"-1"} & set(Counter(negatives.answer("0", 1.0) for _ in range(500)))  # "0" never gives "-1"
    assert set(Counter(negatives.answer("red", 0.0) for _ in range(300))) <= set(negatives.type2ans["other"]) - {"red"}


def test_a_swap_that_changes_nothing_falls_back_to_a_random_caption(negatives) -> None:
    random.seed(3)
    for _ in range(50):
        assert negatives.caption("an empty picture", ["red circle"]) in negatives.captions


def test_grounding_row_crops_around_the_box_and_adds_grounded_captioning(task, tokenizer) -> None:
    random.seed(4)
    torch.manual_seed(4)
    box = [80.0, 50.0, 110.0, 80.0]  # near the right edge of the 120 x 90 image
    for _ in range(20):
        main, second = task.preprocess(row(refs=[{"text": "the Red circle", "box": box}]), "train")
        assert text(tokenizer, main.source) == ' which region does the text " the red circle " describe?'
        bins = bins_of(tokenizer, main.target)
        assert len(bins) == 4
        x0, y0, x1, y1 = [b / (tokenizer.num_bins - 1) * 64 for b in bins]  # max_image_size = image_size = 64
        scale = (x1 - x0) / 30  # the resize keeps the aspect: the box keeps its square shape, inside the crop
        assert 64 / 90 - 0.03 < scale < 80 / 90 + 0.03 and (y1 - y0) == pytest.approx(x1 - x0, abs=1.0)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert text(tokenizer, second.target) == " the red circle"
        assert bins_of(tokenizer, second.source) == bins
        assert text(tokenizer, second.source).startswith("  what does the region describe? region:")


def test_evaluation_boxes_follow_the_square_resize(task, tokenizer) -> None:
    main, _ = task.preprocess(row(refs=[{"text": "x", "box": [60, 45, 120, 90]}]), "val")
    expected = quantize_boxes(torch.tensor([32.0, 32.0, 64.0, 64.0]), 64, tokenizer.num_bins).tolist()
    assert bins_of(tokenizer, main.target) == expected


def test_kinds_are_drawn_by_weight_and_cc12m_ignores_two_tokens(task, tokenizer) -> None:
    random.seed(5)
    both = row(captions=[CAPTION], vqa=[{"question": "what color?", "answers": {"red": 1.0}}], dataset="cc12m")
    kinds = Counter(task.preprocess(both, "train")[0].meta["kind"] for _ in range(200))
    assert kinds["caption"] == pytest.approx(100, abs=30) and kinds["qa"] == 200 - kinds["caption"]
    caption = next(s for s in iter(lambda: task.preprocess(both, "train")[0], None) if s.meta["kind"] == "caption")
    assert caption.target[:2].tolist() == [tokenizer.pad] * 2 and caption.target[2] != tokenizer.pad
    assert task.preprocess(row(label="x"), "train") is None


def test_missing_negative_files_are_one_line_errors(tokenizer, tmp_path) -> None:
    with pytest.raises(RunConfigError, match=r"neg_sample_dir=.*missing all_captions.txt, object.txt, type2ans.json"):
        Negatives.load(str(tmp_path))
