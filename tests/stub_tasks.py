"""A minimal real `Task` for data and callback tests (the `stub_task` fixture of conftest.py). It lives in a
module of its own, not in conftest.py, so that spawned processes can unpickle it by name (several conftest
modules share the name `conftest`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tokenizer import OFATokenizer


class StubTask(Task):
    """Text of `field` (a list: first element, or a string) as target; image resized to `image_size`."""

    def __init__(self, tokenizer: OFATokenizer, name: str = "caption", field: str = "captions",
                 image_size: int = 16) -> None:
        super().__init__(tokenizer, TaskConfig(image_size=image_size))
        self.name, self.field = name, field

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        value = raw.get(self.field)
        if not value or raw.get("image") is None:
            return None
        text = value if isinstance(value, str) else value[0]
        size = self.cfg.image_size
        pixels = np.asarray(raw["image"].resize((size, size)), dtype=np.float32)
        return self.make_sample(raw, self.encode_text(" what does the image describe?", bos=True, eos=True),
                                self.encode_text(" " + text), torch.from_numpy(pixels).permute(2, 0, 1) / 255.0,
                                meta={"key": raw["__key__"], "text": text})
