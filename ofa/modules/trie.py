"""Prefix trie over token sequences: the allowed next tokens of a closed answer set (VQA, SNLI-VE, ...)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


class Trie:
    """Each inserted sequence is a path; `next_tokens(prefix)` lists the children of `prefix`.

    OFA inserts `[<s>] + bpe(" " + answer) + [</s>]` for every candidate answer, so the prefix given
    while decoding or building training masks starts with `<s>`.
    """

    def __init__(self, sequences: Iterable[Sequence[int]] = ()) -> None:
        self.root: dict[int, dict] = {}
        for seq in sequences:
            self.insert(seq)

    def insert(self, seq: Sequence[int]) -> None:
        node = self.root
        for tok in seq:
            node = node.setdefault(int(tok), {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Allowed next tokens after `prefix`; [] if the prefix is not in the trie or is complete."""
        node = self.root
        for tok in prefix:
            node = node.get(int(tok))
            if node is None:
                return []
        return list(node.keys())

    def __contains__(self, seq: Sequence[int]) -> bool:
        node = self.root
        for tok in seq:
            node = node.get(int(tok))
            if node is None:
                return False
        return not node  # a full sequence ends at a leaf
