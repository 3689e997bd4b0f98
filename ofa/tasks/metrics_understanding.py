"""Metrics of the understanding tasks as torchmetrics (sum + count states, summed across processes).

- `VQAAccuracy`: the official VQA accuracy, as computed by the current GT-Vision-Lab/VQA evaluator
  (`PythonEvaluationTools/vqaEvaluation/vqaEval.py` since commit a013f00, 2021-03-11, "Fixed processing
  answers bug"): newlines/tabs -> spaces and surrounding whitespace stripped from the prediction and every
  human answer; then, only when the (stripped) human answers are not all identical, punctuation and
  digit/article/contraction processing of BOTH the prediction and every human answer; accuracy = mean over
  the leave-one-out subsets (each human answer left out once) of min(#matches among the others / 3, 1).
- `VQASoftScore`: OFA's `vqa_score` = the soft score (confidence) of the prediction in the answers dict.
- `GroundingAccuracy`: Acc@0.5 with OFA's IoU (`tasks/mm_tasks/refcoco.py` `_calculate_ap_score`).
- `ExactMatchAccuracy`: top-1 accuracy of predicted strings (SNLI-VE, image classification).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

# ---- official VQA answer normalisation (facts of the evaluation tool) -----------------------------------
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# the tool's contraction table: spelling without apostrophes -> official spelling
_SIMPLE_CONTRACTIONS = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
    "how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't "
    "shan't should've shouldn't that's there'd there're there's they'd they'll they're they've 'twas wasn't "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'll who's who've "
    "why'll why're why's won't would've wouldn't y'all you'd you'll you're you've somebody'll somebody's "
    "someone'd someone'll someone's something'd something'll")
_CONTRACTIONS = {w.replace("'", ""): w for w in _SIMPLE_CONTRACTIONS.split()}
_CONTRACTIONS.update({
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hed've": "he'd've", "he'dve": "he'd've", "Id've": "I'd've", "I'dve": "I'd've", "itd've": "it'd've",
    "it'dve": "it'd've", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shed've": "she'd've", "she'dve": "she'd've",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "somethingd've": "something'd've", "something'dve": "something'd've",
    "thered've": "there'd've", "there'dve": "there'd've", "theyd've": "they'd've", "they'dve": "they'd've",
    "wed've": "we'd've", "we'dve": "we'd've", "whod've": "who'd've", "who'dve": "who'd've",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd've": "you'd've",
    "you'dve": "you'd've",
})


def process_punctuation(text: str) -> str:
    """Official `processPunctuation`: drop or space out punctuation, strip periods not inside numbers."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)  # the tool passes re.UNICODE (32) as `count`


def process_digit_article(text: str) -> str:
    """Official `processDigitArticle`: lower-case, number words -> digits, drop articles, fix contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _strip_vqa_whitespace(answer: str) -> str:
    """Newlines and tabs -> spaces, surrounding whitespace stripped (applied to every answer)."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """The full normalisation of the official tool: whitespace, punctuation, then digits/articles/contractions.

    The tool applies it to the prediction and to every human answer of a question only when the human
    answers (after whitespace stripping) are not all identical; see `vqa_accuracy`.
    """
    return process_digit_article(process_punctuation(_strip_vqa_whitespace(answer)))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the (10) human answers.

    Follows the current evaluator of GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
    (`VQAEval.evaluate`) as of commit a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021-03-11, "Fixed
    processing answers bug"), re-written here, not copied:

    1. newlines and tabs become spaces and surrounding whitespace is stripped, in the prediction and in
       every human answer;
    2. if the stripped human answers are not all the same, BOTH the prediction and every human answer go
       through `process_punctuation` then `process_digit_article`; if they all agree, nothing more is
       done to either (so "two" against ten "2" scores 0, and "the dog" against ten "dog" scores 0);
    3. each human answer is left out once; the score of that subset is min(1, #other answers equal to
       the prediction / 3); the accuracy is the mean over the subsets. The tool leaves out an answer by
       comparing answer dicts, which carry a distinct `answer_id`, so identical answers at different
       positions are distinct items and exactly one is left out each time, as done here by position.

    Before that fix the tool always normalised the prediction fully but gave the human answers only
    punctuation processing (and only when they disagreed). That behaviour is not offered: it was an
    acknowledged bug, and OFA's own VQA numbers do not come from this tool (its validation score is the
    soft score, `VQASoftScore`; its test-dev/test-std numbers come from the EvalAI server).
    """
    pred = _strip_vqa_whitespace(prediction)
    gts = [_strip_vqa_whitespace(a) for a in human_answers]
    if len(set(gts)) > 1:  # the set is taken after whitespace stripping
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    accs = []
    for i in range(len(gts)):  # leave-one-out: the other (9) answers
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


# ---- box IoU --------------------------------------------------------------------------------------------
def box_iou_ofa(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """OFA's IoU of matching rows (N,4) xyxy -> (iou (N,), intersection is non-empty (N,) bool)."""
    lt = torch.maximum(pred[:, :2], gt[:, :2])  # (N, 2)
    rb = torch.minimum(pred[:, 2:], gt[:, 2:])  # (N, 2)
    wh = rb - lt  # (N, 2); negative when the boxes do not overlap
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    iou = inter / (area_p + area_g - inter + 1e-6)
    return iou, (wh[:, 0] > 0) & (wh[:, 1] > 0)


def grounding_hits(pred: Tensor, gt: Tensor, threshold: float = 0.5) -> Tensor:
    """Correct iff IoU >= threshold AND the intersection has positive width and height. (N,) bool."""
    iou, nonempty = box_iou_ofa(pred.double(), gt.double())
    return (iou >= threshold) & nonempty


# ---- torchmetrics ---------------------------------------------------------------------------------------
class _MeanMetric(Metric):
    """Sum + count, summed across processes; `compute` = sum / count."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, values: Sequence[float] | Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64, device=self.total.device)
        self.total += values.sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean; NaN when nothing was measured (e.g. no human answers in the data)."""
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class VQAAccuracy(_MeanMetric):
    """Official VQA accuracy (current GT-Vision-Lab evaluator, see `vqa_accuracy`).

    update(predictions, human_answers) with the (10) human answers per question; compute = the mean.
    """

    def update(self, predictions: Sequence[str], human_answers: Sequence[Sequence[str]]) -> None:
        self._add([vqa_accuracy(p, h) for p, h in zip(predictions, human_answers, strict=True)])


class VQASoftScore(_MeanMetric):
    """OFA's `vqa_score`: mean of `answers.get(prediction, 0)` (answers = {answer: soft score})."""

    def update(self, predictions: Sequence[str], answers: Sequence[Mapping[str, float]]) -> None:
        self._add([float(a.get(p, 0.0)) for p, a in zip(predictions, answers, strict=True)])


class GroundingAccuracy(_MeanMetric):
    """Acc@0.5 of predicted vs ground-truth boxes (N,4), xyxy in original-image pixels."""

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, pred_boxes: Tensor, gt_boxes: Tensor) -> None:
        self._add(grounding_hits(pred_boxes.reshape(-1, 4), gt_boxes.reshape(-1, 4), self.threshold))


class ExactMatchAccuracy(_MeanMetric):
    """Top-1 accuracy: the predicted string equals the reference string."""

    def update(self, predictions: Sequence[str], targets: Sequence[str]) -> None:
        self._add([float(p == t) for p, t in zip(predictions, targets, strict=True)])
