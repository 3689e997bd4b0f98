"""Text metrics: Gigaword re-tokenisation, ROUGE F1 and the GLUE binary-label metrics (hand-computed values)."""
import math
import random
import sys

import pytest
import torch
from torchmetrics.classification import BinaryF1Score, BinaryMatthewsCorrCoef

from ofa.tasks.metrics_text import BinaryLabelMetrics, RougeF1, fix_tokenization, gigaword_hypothesis


# ---- fix_tokenization / gigaword_hypothesis ---------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    # brackets -> PTB names, & < > -> HTML entities, [UNK] -> UNK
    ("a ( b ) [ c ] { d } & < > [UNK]", "a -lrb- b -rrb- -lsb- c -rsb- -lcb- d -rcb- &amp; &lt; &gt; UNK"),
    # a lone " alternates between the opening `` and the closing ''
    ('he said " hi " and " bye "', "he said `` hi '' and `` bye ''"),
    # ' t after a token ending in n: the n moves onto n't; ' s / ' d / ' ll become clitics
    ("he doesn ' t know it ' s john ' d we ' ll", "he does n't know it 's john 'd we 'll"),
    # other ' alternate ` (opening) and ' (closing); "can ' t" -> "ca n't" (PTB)
    ("the ' best ' film can ' t", "the ` best ' film ca n't"),
    ("wait . . . what", "wait ... what"),  # ellipsis
    # "," between number tokens (digits/commas) joins, repeatedly; "." only between all-digit tokens
    ("$ 3 , 000 and 1 , 000 , 000 or 3 . 03 but a , b and 3,000 . 5",
     "$ 3,000 and 1,000,000 or 3.03 but a , b and 3,000 . 5"),
    # acronyms of single capitals: the whole run joins; without the final "." nothing joins
    ("the U . N . said U . S . A . and U . N", "the U.N. said U.S.A. and U . N"),
    # dashes: a dash between non-punctuation tokens glues them (repeatedly); "- -" -> "--"; a leading or
    # trailing dash stays; a dash before/after punctuation stays
    ("- well - known state - of - the - art end -", "- well-known state-of-the-art end -"),
    ("a - - b , - c - ( d", "a -- b , - c - -lrb- d"),
])
def test_fix_tokenization(text, expected):
    assert fix_tokenization(text) == expected


def test_gigaword_hypothesis():
    # lower-cased first (so the acronym and [UNK] rules never fire), then re-tokenised; "<unk>" -> " unk"
    # (hence two spaces) and every 1 -> # (Gigaword writes digits as #)
    assert gigaword_hypothesis("The U.N. said 1,000 <unk> died") == "the u.n. said #,000  unk died"
    assert gigaword_hypothesis(" U . N . chief ' s 11 . 5 - ( [UNK] \n") == "u . n . chief 's ##.5 - -lrb- [unk]"


# ---- ROUGE ------------------------------------------------------------------------------------------------
def _rouge(hyps, refs, **kwargs):
    metric = RougeF1(**kwargs)
    metric.update(hyps, refs)
    out = metric.compute()
    return out["rouge1"].item(), out["rouge2"].item(), out["rougeL"].item()


def test_rouge_overlap_and_lcs():
    # hyp "the cat sat on the mat", ref "the cat is on the mat" (no token longer than 3: nothing stemmed).
    # unigrams: the x2, cat, on, mat shared -> 5 of 6 on each side -> P = R = F1 = 5/6;
    # bigrams: "the cat", "on the", "the mat" shared -> 3 of 5 -> 3/5; LCS "the cat on the mat" = 5 -> 5/6
    r1, r2, rl = _rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert (r1, r2, rl) == pytest.approx((5 / 6, 3 / 5, 5 / 6), abs=1e-6)


def test_rouge_clipping():
    # hyp "the the the cat" (4 tokens), ref "the cat sat" (3). Unigrams: "the" clipped to min(3, 1) = 1,
    # + "cat" = 2 -> P = 2/4, R = 2/3, F1 = 2PR / (P + R) = (2/3) / (7/6) = 4/7.
    # Bigrams: hyp {the the: 2, the cat: 1}, ref {the cat, cat sat} -> 1 hit, P = 1/3, R = 1/2 -> F1 = 2/5.
    # LCS "the cat" = 2 -> same P, R as unigrams -> 4/7.
    r1, r2, rl = _rouge(["the the the cat"], ["the cat sat"])
    assert (r1, r2, rl) == pytest.approx((4 / 7, 2 / 5, 4 / 7), abs=1e-6)


def test_rouge_word_order():
    # "dog bites man" vs "man bites dog": every unigram shared -> 1; no bigram shared -> 0; the LCS is one
    # token long ("bites", or "dog"/"man") -> 1/3
    assert _rouge(["dog bites man"], ["man bites dog"]) == pytest.approx((1.0, 0.0, 1 / 3), abs=1e-6)


def test_rouge_stemming():
    # Porter (nltk) only on tokens longer than 3 characters: "running" -> "run", "dogs" -> "dog"
    # ("run", "dog" are short and kept), so the summaries match completely
    assert _rouge(["running dogs"], ["run dog"]) == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)
    # Porter over-stems both "generous" and "generally" to "gener": a match (one token: no bigram, so
    # ROUGE-2 = 0)
    assert _rouge(["generous"], ["generally"]) == pytest.approx((1.0, 0.0, 1.0), abs=1e-6)
    # "was" has 3 characters, so it is not stemmed (Porter would give "wa"): hyp [run, dog, was] vs
    # ref [run, dog, wa]: unigrams 2/3; bigrams {run dog, dog was} vs {run dog, dog wa}: 1/2; LCS 2 -> 2/3
    assert _rouge(["running dogs was"], ["run dog wa"]) == pytest.approx((2 / 3, 1 / 2, 2 / 3), abs=1e-6)


def test_rouge_empty_hypothesis():
    # no tokens (empty, or punctuation only) -> every F1 is 0
    assert _rouge([""], ["the cat"]) == (0.0, 0.0, 0.0)
    assert _rouge([". . ."], ["the cat"]) == (0.0, 0.0, 0.0)


def test_rouge_mean_of_samples_and_batches():
    # the metric is the mean of the per-sample F1 (cat/mat and clipping cases above), however batched
    expected = ((5 / 6 + 4 / 7) / 2, (3 / 5 + 2 / 5) / 2, (5 / 6 + 4 / 7) / 2)
    hyps, refs = ["the cat sat on the mat", "the the the cat"], ["the cat is on the mat", "the cat sat"]
    assert _rouge(hyps, refs) == pytest.approx(expected, abs=1e-6)
    metric = RougeF1()
    metric.update(hyps[:1], refs[:1])
    metric.update(hyps[1:], refs[1:])
    metric.update([], [])  # nothing to add
    out = metric.compute()
    assert (out["rouge1"].item(), out["rouge2"].item(), out["rougeL"].item()) == pytest.approx(expected, abs=1e-6)
    assert out["rouge1"].shape == ()


def test_rouge_gigaword_normalisation():
    # gigaword=True: "The Dow rose 1 point" -> "the dow rose # point"; "#" is not [a-z0-9], so both sides
    # tokenise to [the, dow, rose, point] -> 1, 1, 1.
    assert _rouge(["The Dow rose 1 point"], ["the dow rose # point"]) == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)
    # gigaword=False: hyp [the, dow, rose, 1, point] (5) vs ref (4): unigrams P = 4/5, R = 1 -> 8/9;
    # bigrams {the dow, dow rose, rose 1, 1 point} vs {the dow, dow rose, rose point}: 2 hits, P = 1/2,
    # R = 2/3 -> 4/7; LCS = 4 -> 8/9
    assert _rouge(["The Dow rose 1 point"], ["the dow rose # point"], gigaword=False) == pytest.approx(
        (8 / 9, 4 / 7, 8 / 9), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # compute before update
def test_rouge_empty_and_mismatch():
    assert all(math.isnan(v.item()) for v in RougeF1().compute().values())
    with pytest.raises(ValueError):
        RougeF1().update(["a"], ["a", "b"])


def test_rouge_matches_google_rouge_score():
    # cross-check against Google's rouge_score (a test extra, not a dependency of the package: skipped when absent)
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    # rouge_score imports absl, whose log handler keeps the sys.stderr of that moment (pytest's capture of this test)
    # and closes it on `logging.shutdown`, which a later Hydra run in this process calls: that closed pytest's own
    # stream and failed every test after it in the worker. The real stderr is never closed.
    sys.modules["absl.logging"].get_absl_handler().python_handler.stream = sys.__stderr__
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    words = ("the police arrested running runs runner dogs dog cats says said u.s. stocks fell rise rising "
             "prices # 1 2,000 ' s , - ( ) \" <unk> was is generally generous").split()
    rng = random.Random(0)
    for _ in range(12):
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        for gigaword in (False, True):
            hyp = gigaword_hypothesis(pred) if gigaword else pred
            expected = scorer.score(ref.lower(), hyp)  # score(target, prediction)
            got = _rouge([pred], [ref], gigaword=gigaword)
            assert got == pytest.approx(tuple(expected[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")),
                                        abs=1e-6)


# ---- GLUE binary-label metrics ----------------------------------------------------------------------------
def _binary(preds, labels, keys=("acc", "mcc", "f1")):
    metric = BinaryLabelMetrics(positive="yes", keys=keys)
    metric.update(preds, labels)
    return {k: v.item() for k, v in metric.compute().items()}


def test_binary_metrics_confusion_matrix():
    # 5 positives: 3 answered "yes" (TP), one "no" and one out-of-label "maybe" (both FN);
    # 3 negatives: 2 "no" (TN), one "yes" (FP). TP=3, TN=2, FP=1, FN=2:
    # acc = 5/8; MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6-2) / sqrt(4*5*3*4) = 4/sqrt(240);
    # F1 = 2TP / (2TP + FP + FN) = 6/9
    preds = ["yes", "yes", "yes", "no", "maybe", "no", "no", "yes"]
    labels = ["yes", "yes", "yes", "yes", "yes", "no", "no", "no"]
    out = _binary(preds, labels)
    assert out == pytest.approx({"acc": 5 / 8, "mcc": 4 / math.sqrt(240), "f1": 6 / 9}, abs=1e-6)
    # torchmetrics on the same binary decisions agrees
    pred_t, target_t = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1]), torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
    assert BinaryMatthewsCorrCoef()(pred_t, target_t).item() == pytest.approx(out["mcc"], abs=1e-6)
    assert BinaryF1Score()(pred_t, target_t).item() == pytest.approx(out["f1"], abs=1e-6)


def test_binary_metrics_out_of_label_on_negative_is_false_positive():
    # label "no", answer "unsure" -> counted as "yes" (wrong): TP=1, FP=1, TN=1, FN=0;
    # acc = 2/3, F1 = 2/(2+1) = 2/3, MCC = (1*1 - 1*0) / sqrt(2*1*2*1) = 1/2
    out = _binary(["yes", "unsure", "no"], ["yes", "no", "no"])
    assert out == pytest.approx({"acc": 2 / 3, "mcc": 0.5, "f1": 2 / 3}, abs=1e-6)


def test_binary_metrics_perfect_and_one_class():
    assert _binary(["yes", "no", "no"], ["yes", "no", "no"]) == pytest.approx({"acc": 1, "mcc": 1, "f1": 1})
    # every answer "yes", labels 3 yes / 1 no: TP=3, FP=1, TN=FN=0 -> acc 3/4, F1 = 6/7; MCC undefined
    # (no negative predictions) -> 0, as sklearn / GLUE. torchmetrics gives its eps limit instead:
    # sqrt(eps)(TP-FP) / sqrt((TP+FP)*TP*FP*eps) = 2/sqrt(12) = 1/sqrt(3)
    preds, labels = ["yes"] * 4, ["yes", "yes", "yes", "no"]
    assert _binary(preds, labels) == pytest.approx({"acc": 3 / 4, "mcc": 0.0, "f1": 6 / 7}, abs=1e-6)
    tm_mcc = BinaryMatthewsCorrCoef()(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0])).item()
    assert tm_mcc == pytest.approx(1 / math.sqrt(3), abs=1e-4)
    # only positives, all right: MCC undefined -> 0 (torchmetrics says 1); acc = F1 = 1
    assert _binary(["yes", "yes"], ["yes", "yes"]) == pytest.approx({"acc": 1, "mcc": 0, "f1": 1})
    assert BinaryMatthewsCorrCoef()(torch.tensor([1, 1]), torch.tensor([1, 1])).item() == 1
    # only negatives, all right: no positive at all -> F1 = 0 (zero_division 0, as BinaryF1Score)
    assert _binary(["no", "no"], ["no", "no"]) == pytest.approx({"acc": 1, "mcc": 0, "f1": 0})


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # compute before update
def test_binary_metrics_keys_batches_and_empty():
    metric = BinaryLabelMetrics(positive="yes", keys=("acc", "f1"))
    assert all(math.isnan(v.item()) for v in metric.compute().values())
    metric.update(["yes", "no"], ["yes", "yes"])  # TP=1, FN=1
    metric.update(["yes"], ["no"])  # FP=1
    out = metric.compute()
    assert set(out) == {"acc", "f1"} and out["acc"].shape == ()
    # acc = 1/3; F1 = 2/(2+1+1) = 1/2
    assert {k: v.item() for k, v in out.items()} == pytest.approx({"acc": 1 / 3, "f1": 1 / 2}, abs=1e-6)
    with pytest.raises(ValueError):
        BinaryLabelMetrics(keys=("acc", "auc"))
    with pytest.raises(ValueError):
        metric.update(["yes"], [])
