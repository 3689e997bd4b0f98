"""Negatives of OFA's image-text matching examples (spec §3.11; `neg_sample_dir` of `unify_task`).

The folder holds OFA's three files: `all_captions.txt` (one caption a line), `object.txt` (one object name a
line) and `type2ans.json` (`{answer type: [answers]}`, with an `other` list). `ans2type` maps each answer to
its type (`other` excluded; a later type wins, as OFA's dict build).

- negative caption: with probability `object_swap_prob` (OFA: 0.4) and ground-truth objects given, one GT
  object word of the caption replaced by a random other object; else a random caption. OFA keeps a "swap"
  that changed nothing (the object word is not in the caption), which labels the true caption "no"; here
  that case falls back to a random caption (ours, so the negative is never the positive).
- negative answer: with probability ~conf - 0.1 (OFA: `conf > p + 0.1`) an answer of the same type; for
  "how many" with a numeric answer and `p > 0.5` the number +-1 ("0" gives "1": OFA's `answer != 0` compares
  a string with an int, so it could give "-1"); otherwise an answer from `other`.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ofa.errors import RunConfigError

FILES = ("all_captions.txt", "object.txt", "type2ans.json")


@dataclass
class Negatives:
    captions: list[str]
    objects: list[str]
    type2ans: dict[str, list[str]]
    object_swap_prob: float = 0.4

    def __post_init__(self) -> None:
        self.ans2type = {a: t for t, answers in self.type2ans.items() if t != "other" for a in answers}

    @classmethod
    def load(cls, folder: str, object_swap_prob: float = 0.4, key: str = "task.neg_sample_dir") -> Negatives:
        """OFA's `negative_sample/` folder; a missing or empty file is one line naming it and `key`."""
        root = Path(folder).expanduser()
        missing = [name for name in FILES if not (root / name).is_file()]
        if missing:
            raise RunConfigError(f"{key}={folder}: missing {', '.join(missing)} (OFA's negative_sample/ folder: "
                                 f"{', '.join(FILES)})")
        lines = {name: [r.strip() for r in (root / name).read_text(encoding="utf-8").splitlines() if r.strip()]
                 for name in FILES[:2]}
        type2ans = json.loads((root / FILES[2]).read_text(encoding="utf-8"))
        for name, items in [*lines.items(), ("type2ans.json 'other'", type2ans.get("other"))]:
            if not items or len(items) < 2:
                raise RunConfigError(f"{key}={folder}: {name} needs at least two entries")
        return cls(lines["all_captions.txt"], lines["object.txt"], type2ans, object_swap_prob)

    def write(self, folder: str | Path) -> Path:
        """Write the three files in OFA's layout (the synthetic world's folder, tests)."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        (root / FILES[0]).write_text("\n".join(self.captions) + "\n", encoding="utf-8")
        (root / FILES[1]).write_text("\n".join(self.objects) + "\n", encoding="utf-8")
        (root / FILES[2]).write_text(json.dumps(self.type2ans, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return root

    def caption(self, caption: str, gt_objects: list[str] | None) -> str:
        if gt_objects and random.random() < self.object_swap_prob:
            gt = random.choice(gt_objects)
            swapped = caption.replace(gt, _other(self.objects, gt))
            if swapped != caption:
                return swapped
        return random.choice(self.captions)

    def answer(self, answer: str, conf: float) -> str:
        p = random.random()
        kind = self.ans2type.get(answer)
        if kind is not None and conf > p + 0.1:
            if kind == "how many" and answer.isdigit() and p > 0.5:
                return "1" if answer == "0" else str(int(answer) + random.choice((-1, 1)))
            return _other(self.type2ans[kind], answer)
        return _other(self.type2ans["other"], answer)


def _other(items: list[str], avoid: str) -> str:
    """OFA's draw: one of `items[:-1]`, replaced by `items[-1]` when it is `avoid`."""
    pick = random.choice(items[:-1])
    return items[-1] if pick == avoid else pick


def question_type(question: str, answer: str) -> str:
    """The synthetic world's answer types: yes/no answers, "how many", else the question's first two words."""
    if answer in ("yes", "no"):
        return "yes/no"
    words = question.lower().split()
    return "how many" if words[:2] == ["how", "many"] else " ".join(words[:2])
