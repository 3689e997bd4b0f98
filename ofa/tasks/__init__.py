"""Tasks: prompts, targets, constraints, decoding and metrics. `TASKS` maps config names to classes.

To add a task: write `ofa/tasks/<name>.py` with a `Task` subclass (its config dataclass as `config_class`,
or as the annotation of `__init__`'s `cfg`), add one line to `TASKS`, and write `conf/task/<name>.yaml`
starting with `defaults: [/schema/task/<name>@_here_, _self_]` (the schema is registered from the class).
"""
from __future__ import annotations

from ofa.tasks.base import Task, TaskConfig
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.detection import DetectionTask
from ofa.tasks.gigaword import GigawordTask
from ofa.tasks.glue import GLUE_TASKS
from ofa.tasks.grounding import GroundingTask
from ofa.tasks.image_classify import ImageClassifyTask
from ofa.tasks.image_gen import ImageGenTask
from ofa.tasks.image_infill import ImageInfillTask
from ofa.tasks.pretrain import PretrainTask
from ofa.tasks.snli_ve import SNLIVETask
from ofa.tasks.text_infill import TextInfillTask
from ofa.tasks.vqa import VQATask

TASKS: dict[str, type[Task]] = {
    "caption": CaptionTask,
    "vqa": VQATask,
    "grounding": GroundingTask,
    "snli_ve": SNLIVETask,
    "image_classify": ImageClassifyTask,
    **GLUE_TASKS,  # cola, sst2, mnli, rte, qnli, mrpc, qqp
    "gigaword": GigawordTask,
    "text_infill": TextInfillTask,
    "image_gen": ImageGenTask,
    "image_infill": ImageInfillTask,
    "detection": DetectionTask,
    "pretrain": PretrainTask,  # OFA's unify_task, image-text side; task=pretrain adds the extras
}

__all__ = ["TASKS", "Task", "TaskConfig", "CaptionTask", "CaptionConfig"]
