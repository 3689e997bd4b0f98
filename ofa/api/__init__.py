"""The user surface in Python: `from_pretrained(path)` -> `OFA` (caption, vqa, ground, classify, generate,
text_to_image, save_pretrained). docs/API.md has the tour."""
from __future__ import annotations

from ofa.api.pipeline import OFA, from_pretrained

__all__ = ["OFA", "from_pretrained"]
