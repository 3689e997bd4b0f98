"""OFA's text normalisation (spec §3.1): `pre_caption`, `pre_question`, punctuation stripping."""
from __future__ import annotations

import re
import string

_STRIP_LEAD = ",.!?*#:;~"
_PUNCT_TABLE = str.maketrans({c: "" for c in string.punctuation})


def _normalise(text: str, max_words: int) -> str:
    text = text.lower().lstrip(_STRIP_LEAD).replace("-", " ").replace("/", " ")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_caption(caption: str, max_words: int = 0) -> str:
    """Lower-case, strip leading punctuation, `-` and `/` to spaces, `<person>` to person, collapse spaces."""
    return _normalise(caption.replace("<person>", "person"), max_words)


def pre_question(question: str, max_words: int = 0) -> str:
    """`pre_caption` without the `<person>` rule, then `?` appended if missing (VQA dataset)."""
    question = _normalise(question, max_words)
    return question if question.endswith("?") else question + "?"


def strip_punctuation(text: str) -> str:
    """Remove every `string.punctuation` character and collapse whitespace (caption targets and metrics)."""
    return " ".join(text.translate(_PUNCT_TABLE).split())
