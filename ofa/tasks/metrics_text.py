"""Metrics of the text tasks as torchmetrics (sum / count states, summed across processes).

- `fix_tokenization`, `gigaword_hypothesis`: OFA's PTB-style re-tokenisation and normalisation of a
  Gigaword hypothesis before ROUGE (`tasks/nlg_tasks/gigaword.py`), re-written from its behaviour.
- `RougeF1`: mean per-summary ROUGE-1/2/L F1 (Google `rouge_score` semantics, through torchmetrics).
- `BinaryLabelMetrics`: accuracy, Matthews correlation and F1 of yes/no-style answer strings (GLUE).
"""
from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryMatthewsCorrCoef
from torchmetrics.functional.text.rouge import rouge_score

# ---- Gigaword hypothesis normalisation -------------------------------------------------------------------
_PTB_TOKENS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
               "[UNK]": "UNK", "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _is_number(tok: str) -> bool:
    """Digits and commas only (the left/right side of `3 , 000`)."""
    return all(ch.isdigit() or ch == "," for ch in tok)


def _is_punctuation(tok: str) -> bool:
    """OFA's `tok in string.punctuation`: a substring test, so runs such as "()" count, "``" does not."""
    return tok in string.punctuation


def _is_capital(tok: str) -> bool:
    return len(tok) == 1 and tok.isupper()


def fix_tokenization(text: str) -> str:
    """OFA's PTB-style re-tokenisation of a whitespace-tokenised hypothesis.

    Brackets and `& < >` -> PTB/HTML escapes, `"` -> alternately `` and '', `n ' t` -> `n't` (the `n`
    moves: `doesn ' t` -> `does n't`), `' s`/`' d`/`' ll` -> `'s`/`'d`/`'ll`, other `'` -> alternately ` and ',
    `. . .` -> `...`, `3 , 000` -> `3,000`, `3 . 03` -> `3.03`, `U . N .` -> `U.N.`, `- -` -> `--` and
    `well - known` -> `well-known` (a dash between two non-punctuation tokens glues them).

    One deliberate difference: OFA's acronym branch consumes only `. N` and leaves the closing period as a
    token (`U . N .` -> `U.N. .`); here the whole run `U . N .` (or `U . S . A .`) becomes one token. The
    branch needs upper-case letters, which `gigaword_hypothesis` never passes (it lower-cases first), so
    OFA's ROUGE numbers are unaffected.
    """
    toks = text.split()
    out: list[str] = []
    open_double = open_single = False
    after_glue_dash = False
    i, n = 0, len(toks)
    while i < n:
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < n else None
        glue_dash = False
        if tok in _PTB_TOKENS:
            out.append(_PTB_TOKENS[tok])
        elif tok == '"':
            out.append("''" if open_double else "``")
            open_double = not open_double
        elif tok == "'" and nxt == "t" and out and out[-1].endswith("n"):
            out[-1] = out[-1][:-1]
            out.append("n't")
            i += 1
        elif tok == "'" and nxt in ("s", "d", "ll"):
            out.append("'" + nxt)
            i += 1
        elif tok == "'":
            out.append("'" if open_single else "`")
            open_single = not open_single
        elif tok == "." and toks[i + 1:i + 3] == [".", "."]:
            out.append("...")
            i += 2
        elif tok == "," and out and _is_number(out[-1]) and nxt is not None and _is_number(nxt):
            out[-1] += "," + nxt
            i += 1
        elif tok == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt
            i += 1
        elif (tok == "." and out and _is_capital(out[-1]) and nxt is not None and _is_capital(nxt)
              and i + 2 < n and toks[i + 2] == "."):
            out[-1] += "."  # the acronym's first letter takes its period, then each following "X ."
            while i + 2 < n and _is_capital(toks[i + 1]) and toks[i + 2] == ".":
                out[-1] += toks[i + 1] + "."
                i += 2
        elif tok == "-":
            if nxt == "-":
                out.append("--")
                i += 1
            elif i == 0 or nxt is None:
                out.append("-")
            elif not _is_punctuation(out[-1]) and not _is_punctuation(nxt[0]):
                out[-1] += "-"
                glue_dash = True
            else:
                out.append("-")
        elif after_glue_dash and out and not _is_punctuation(tok[0]):
            out[-1] += tok
        else:
            out.append(tok)
        after_glue_dash = glue_dash
        i += 1
    return " ".join(out)


def gigaword_hypothesis(text: str) -> str:
    """OFA's normalisation of a generated summary: lower-case, `fix_tokenization`, `<unk>` -> ` unk`, 1 -> #.

    (Gigaword references already write every digit as `#`; OFA only lower-cases the references.)
    """
    return fix_tokenization(text.lower().strip()).replace("<unk>", " unk").replace("1", "#")


# ---- ROUGE ----------------------------------------------------------------------------------------------
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


class RougeF1(Metric):
    """Mean per-summary ROUGE-1, ROUGE-2 and ROUGE-L F1 (0-1) of single-reference summaries.

    What OFA reports for Gigaword: Google's `rouge_score` (through HF datasets' rouge script, `use_stemmer=
    True`, no aggregation) and the mean of the per-sample F1 (x100 in their logs; kept in 0-1 here). Hence
    these options, computed by torchmetrics' `rouge_score` (same tokeniser, stemmer and formulas):
    - tokens: lower-cased text, every run of characters outside [a-z0-9] is a separator;
    - Porter stemming (nltk, default mode) of tokens longer than 3 characters (`use_stemmer=True`);
    - ROUGE-N: clipped n-gram overlap; ROUGE-L: LCS of the whole summary (not the per-sentence rougeLsum);
    - F1 = 2PR / (P + R) (0 when nothing overlaps or either side has no tokens); no length limit.
    This equals ROUGE-1.5.5 with `-m` (stemming), no stopword removal and F-measure alpha 0.5, up to
    tokenisation details. `update(predictions, references)`: with `gigaword=True` (the default) each
    prediction goes through `gigaword_hypothesis`; references are lower-cased, as in OFA.
    `compute()` -> {"rouge1", "rouge2", "rougeL"}: 0-dim tensors, NaN before any update.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, gigaword: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gigaword = gigaword
        for key in ROUGE_KEYS:
            self.add_state(f"{key}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if len(predictions) == 0:
            return
        hyps = [gigaword_hypothesis(p) if self.gigaword else p for p in predictions]
        refs = [r.lower() for r in references]  # a list of str: torchmetrics reads it as one reference each
        means = rouge_score(hyps, refs, use_stemmer=True, rouge_keys=ROUGE_KEYS)  # means over this batch
        for key in ROUGE_KEYS:
            total = getattr(self, f"{key}_sum")
            total += means[f"{key}_fmeasure"].to(total) * len(hyps)
        self.count += len(hyps)

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            return {key: torch.tensor(float("nan")) for key in ROUGE_KEYS}
        return {key: (getattr(self, f"{key}_sum") / self.count).float() for key in ROUGE_KEYS}


# ---- GLUE-style binary answers --------------------------------------------------------------------------
class BinaryLabelMetrics(BinaryMatthewsCorrCoef):
    """Accuracy, Matthews correlation and F1 of answer strings against label strings (one positive word).

    A prediction is right iff it equals its label; a wrong one counts as the opposite of the label, so a
    prediction that is neither label word (e.g. "maybe") is a false negative on a positive sample and a
    false positive on a negative one. Labels other than `positive` are negatives. The state is the 2x2
    confusion matrix of torchmetrics' `BinaryMatthewsCorrCoef` (summed across processes).
    - acc: exact-match accuracy over all samples;
    - mcc: torchmetrics' MCC, except 0 wherever it is undefined (a row or column of the confusion matrix
      is empty: one class only among the labels or the predictions), as sklearn and the GLUE scorer do;
      torchmetrics instead gives 1 for a perfect single-class set and an eps-limit value otherwise;
    - f1: F1 of the positive class, 2TP / (2TP + FP + FN) (0 when TP + FP + FN = 0), equal to
      torchmetrics' `BinaryF1Score`.
    `compute()` -> dict of 0-dim tensors for the requested `keys`, NaN before any update.
    """

    def __init__(self, positive: str = "yes", keys: Sequence[str] = ("acc", "mcc"), **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = set(keys) - {"acc", "mcc", "f1"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; choose from acc, mcc, f1")
        self.positive = positive
        self.keys = tuple(keys)

    def update(self, preds: Sequence[str], labels: Sequence[str]) -> None:  # type: ignore[override]
        if len(preds) != len(labels):
            raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
        target = torch.tensor([lab == self.positive for lab in labels], dtype=torch.long)  # (N,)
        right = torch.tensor([p == lab for p, lab in zip(preds, labels)], dtype=torch.bool)  # (N,)
        pred = torch.where(right, target, 1 - target)  # (N,) a wrong answer is the other class
        super().update(pred.to(self.device), target.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        (tn, fp), (fn, tp) = self.confmat.double()  # rows: label 0/1, columns: prediction 0/1
        total = tn + fp + fn + tp
        if total == 0:
            return {key: torch.tensor(float("nan")) for key in self.keys}
        out = {"acc": (tp + tn) / total}
        if "mcc" in self.keys:
            defined = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) > 0
            out["mcc"] = super().compute().double() if defined else torch.zeros((), dtype=torch.float64)
        f1_denominator = 2 * tp + fp + fn
        out["f1"] = 2 * tp / f1_denominator if f1_denominator > 0 else torch.zeros((), dtype=torch.float64)
        return {key: out[key].float() for key in self.keys}
