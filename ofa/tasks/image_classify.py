"""Image classification as OFA's `image_classify` (spec §3.7): generate the class name, all-candidate top-1.

Source `" what does the image describe?"`, target `" {class name}"` (prompt_type `none`); a trie over all
class names masks training and scoring. ImageNet recipes use ImageNet mean/std and `augment: randaug`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ofa.tasks.base import Sample, TaskConfig
from ofa.tasks.candidates import ClosedSetTask, load_candidates

PROMPT = " what does the image describe?"


@dataclass
class ImageClassifyConfig(TaskConfig):
    """Image classification settings."""

    image_size: int = 480
    max_tgt_length: int = 30  # class-name BPE tokens
    prompt_type: str = "none"
    classes_file: str | None = None  # json list (or {name: index}) of class names
    classes: list[str] | None = None  # inline class names; override classes_file
    use_constraint: bool = True
    candidate_chunk_size: int = 20


class ImageClassifyTask(ClosedSetTask):
    """OFA's `image_classify` task (module docstring)."""

    name = "image_classify"
    monitor = "acc"
    config_class = ImageClassifyConfig

    def candidate_list(self) -> list[str]:
        if self.cfg.classes:
            return list(self.cfg.classes)
        if not self.cfg.classes_file:
            raise ValueError("image_classify: set task.classes_file (the dataset's classes.json) or task.classes")
        return load_candidates(self.cfg.classes_file)

    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        label = raw.get("label")
        if not label or raw.get("image") is None:
            return None
        if self.cfg.use_constraint and split == "train" and label not in self.candidates:
            return None
        source = self.encode_text(PROMPT, bos=True, eos=True)
        return self.build_sample(raw, source, str(label), split)
