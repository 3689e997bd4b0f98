"""OFA's unified pretraining, image-text side (`unify_task`, spec §3.11 `process_image_text_pair`).

Each image-text row gives its main example and a second one (a list of two `Sample`s):

| kind | main: source -> target | second |
|---|---|---|
| caption | ` what does the image describe?` -> ` {caption}` | ITM: ` does the image describe " {caption or negative} "?` -> ` yes`/` no` |
| qa | ` {question}` -> ` {best answer}` (conf = its score) | ITM: ` what is the answer to question " {q} ". is " {a or negative} "?` -> ` yes`/` no` |
| visual_grounding | ` which region does the text " {text} " describe?` -> `<bin>`x4 | `  what does the region describe? region: <bin>x4` -> ` {text}` |

ITM examples are positive or negative with probability 1/2 and made in training only (OFA's); negatives come
from `ofa.tasks.pretrain_negatives` (the `neg_sample_dir` files). OFA's rows have one kind each; a row of this
platform's shards may carry several (the synthetic world has captions, questions and boxes for every image),
so training draws one kind per row by `caption_weight` / `qa_weight` / `grounding_weight` among those the row
has (evaluation takes the first in that order). For `dataset == "cc12m"` rows the first two caption target
tokens are ignored (OFA's).

Images (training, `ofa.tasks.pretrain_transforms`): caption/qa random resize + centre crop + RandomAugment(2, 7);
grounding the same resize + ObjectCenterCrop, boxes quantised with `max_image_size`; evaluation: square resize.
In training every sample carries `sample_patch_num` (OFA: 196 of 24 x 24 patches): the image-text mini-batch
keeps that many random patches per image. The extras (text infilling, image infilling, detection) are their own
tasks and data sources, scheduled every 8th row (`data.sources.<task>.every`, conf/data/pretrain.yaml) and
collated as a second mini-batch with all patches; the loss is `loss_v1/ntok_v1 + loss_v2/ntok_v2`
(`ofa.lit_module.OFALitModule.training_loss`). docs/PRETRAINING.md.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.detection import detections
from ofa.tasks.grounding import quantize_boxes
from ofa.tasks.pretrain_negatives import Negatives
from ofa.tasks.pretrain_transforms import RandomAugment, image_text_transform, object_center_crop
from ofa.tasks.text import pre_caption, pre_question

KINDS = ("caption", "qa", "visual_grounding")


@dataclass
class PretrainConfig(TaskConfig):
    """`unify_task`'s image-text options (OFA's pretraining values as defaults)."""

    image_size: int = 384  # patch_image_size
    max_image_size: int = 512  # box normaliser of grounding (bins span ~0..750 at S = 384)
    max_src_length: int = 80  # words
    max_tgt_length: int = 30  # words
    label_smoothing: float = 0.0
    sample_patch_num: int | None = 196  # patches kept per image in training (null: all)
    neg_sample_dir: str | None = None  # all_captions.txt, object.txt, type2ans.json
    object_swap_prob: float = 0.4  # negative captions: swap an object word (else a random caption)
    itm_positive_prob: float = 0.5
    caption_weight: float = 1.0  # kind drawn per row among those it has (OFA's rows have one each)
    qa_weight: float = 1.0
    grounding_weight: float = 1.0
    augment_n: int = 2  # RandomAugment(N, M) of image-text pairs
    augment_m: int = 7
    caption_prompt: str = " what does the image describe?"
    itm_caption_prompt: str = ' does the image describe " {} "?'
    itm_answer_prompt: str = ' what is the answer to question " {} ". is " {} "?'
    grounding_prompt: str = ' which region does the text " {} " describe?'
    region_prompt: str = "  what does the region describe? region:"


class PretrainTask(Task):
    """Image-text rows -> [main example, second example] (module docstring)."""

    name = "pretrain"
    monitor = "loss"
    config_class = PretrainConfig

    def __init__(self, tokenizer: Any, cfg: PretrainConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: PretrainConfig = cfg
        self._negatives: Negatives | None = None
        augment = RandomAugment(cfg.augment_n, cfg.augment_m)
        self._pair_transform = image_text_transform(cfg.image_size, cfg.mean, cfg.std, augment)
        self._grounding_transform = object_center_crop(cfg.image_size, cfg.mean, cfg.std)
        self.yes, self.no = self.encode_text(" yes"), self.encode_text(" no")

    @property
    def negatives(self) -> Negatives:
        """Loaded on first use (in the loader workers), from `neg_sample_dir`."""
        if self._negatives is None:
            if not self.cfg.neg_sample_dir:
                raise RunConfigError("task.tasks.pretrain.neg_sample_dir is not set: the image-text matching "
                                     "negatives need OFA's negative_sample/ folder")
            self._negatives = Negatives.load(self.cfg.neg_sample_dir, self.cfg.object_swap_prob)
        return self._negatives

    # ---- kinds ----------------------------------------------------------------------------------
    def kind(self, raw: dict[str, Any], split: str) -> str | None:
        """The row's kind: OFA's `type` if given, else drawn by weight among the annotations it has."""
        has = {"caption": bool(raw.get("captions")), "qa": bool(raw.get("vqa")),
               "visual_grounding": bool(raw.get("refs"))}
        weights = {"caption": self.cfg.caption_weight, "qa": self.cfg.qa_weight,
                   "visual_grounding": self.cfg.grounding_weight}
        options = [k for k in KINDS if has[k] and weights[k] > 0]
        if not options:
            return None
        if split != "train":
            return options[0]
        return random.choices(options, [weights[k] for k in options])[0]

    def preprocess(self, raw: dict[str, Any], split: str) -> list[Sample] | None:
        if raw.get("image") is None:
            return None
        kind = self.kind(raw, split)
        if kind is None:
            return None
        build = {"caption": self._caption, "qa": self._qa, "visual_grounding": self._grounding}[kind]
        samples = build(raw, split)
        if split == "train":
            for s in samples:
                s.sample_patch_num = self.cfg.sample_patch_num
        return samples

    def _pixels(self, raw: dict[str, Any], split: str) -> Tensor:
        if split == "train":
            return self._pair_transform(raw["image"])
        return self.transform(split)(raw["image"])[0]

    def _source(self, text: str) -> Tensor:
        return self.encode_text(text, bos=True, eos=True)

    def _itm(self, raw: dict[str, Any], pixels: Tensor, positive_text: str, negative: Any, prompt: Any,
             conf: float) -> Sample:
        """The image-text matching example: `prompt(text)` -> ` yes` (the true text) or ` no` (a negative)."""
        positive = random.random() < self.cfg.itm_positive_prob
        text = positive_text if positive else negative()
        return self.make_sample(raw, self._source(prompt(text)), self.yes if positive else self.no, pixels,
                                conf=conf, meta={"kind": "itm", "positive": positive})

    def _caption(self, raw: dict[str, Any], split: str) -> list[Sample]:
        caption = self.pick(raw["captions"], split)
        pixels = self._pixels(raw, split)
        target = self.encode_text(" " + pre_caption(caption, self.cfg.max_tgt_length))
        main = self.make_sample(raw, self._source(self.cfg.caption_prompt), target, pixels,
                                meta={"kind": "caption", "references": [caption]})
        if raw.get("dataset") == "cc12m":
            main.target[:2] = self.tokenizer.pad  # OFA ignores the first two tokens of cc12m captions
        if split != "train":
            return [main]
        gt = gt_objects(raw)
        max_src = self.cfg.max_src_length
        second = self._itm(raw, pixels, pre_caption(caption, max_src),
                           lambda: pre_caption(self.negatives.caption(caption, gt), max_src),
                           self.cfg.itm_caption_prompt.format, 1.0)
        return [main, second]

    def _qa(self, raw: dict[str, Any], split: str) -> list[Sample]:
        item = self.pick(raw["vqa"], split)
        answers = {str(a): float(c) for a, c in item["answers"].items()}
        answer = max(answers, key=answers.get)
        conf = answers[answer]
        question = pre_question(item["question"], self.cfg.max_src_length)
        pixels = self._pixels(raw, split)
        main = self.make_sample(raw, self._source(f" {question}"), self.encode_text(f" {answer}"), pixels,
                                conf=conf, meta={"kind": "qa", "answers": answers})
        if split != "train":
            return [main]
        prompt = self.cfg.itm_answer_prompt
        second = self._itm(raw, pixels, answer, lambda: self.negatives.answer(answer, conf),
                           lambda a: prompt.format(question, a), conf)
        return [main, second]

    def _grounding(self, raw: dict[str, Any], split: str) -> list[Sample]:
        ref = self.pick(raw["refs"], split)
        if split == "train":
            pixels, box = self._grounding_transform(raw["image"], ref["box"])
        else:
            pixels, boxes = self.transform(split)(raw["image"], [ref["box"]])
            box = boxes[0]
        tok = self.tokenizer
        bins = quantize_boxes(box, self.cfg.max_image_size, tok.num_bins) + tok.bin_offset  # (4,)
        text = pre_caption(ref["text"], self.cfg.max_src_length)
        main = self.make_sample(raw, self._source(self.cfg.grounding_prompt.format(text)), bins, pixels,
                                meta={"kind": "visual_grounding", "box": box.tolist()})
        region = torch.cat([torch.tensor([tok.bos]), self.encode_text(self.cfg.region_prompt), bins,
                            torch.tensor([tok.eos])])
        target = self.encode_text(" " + pre_caption(ref["text"], self.cfg.max_tgt_length))
        second = self.make_sample(raw, region, target, pixels, meta={"kind": "grounded_caption"})
        return [main, second]

    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        super().check(model_cfg, tokenizer, prefix)
        if getattr(tokenizer, "num_bins", 0) < 2:
            raise RunConfigError(f"{prefix}: pretraining needs <bin_i> location tokens (grounding) but the "
                                 f"tokenizer has {getattr(tokenizer, 'num_bins', 0)}")
        n = self.cfg.sample_patch_num
        side = -(-self.cfg.image_size // model_cfg.patch_stride)
        if n is not None and not 0 < n <= side * side:
            raise RunConfigError(f"{prefix}.sample_patch_num={n}: the {side}x{side} patch grid of "
                                 f"image_size={self.cfg.image_size} has {side * side} patches")
        if self.cfg.neg_sample_dir:
            Negatives.load(self.cfg.neg_sample_dir, key=f"{prefix}.neg_sample_dir")

    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        return []  # OFA validates no pretraining metric; the loss (val/pretrain/loss) is logged


def gt_objects(raw: dict[str, Any]) -> list[str]:
    """Object names of the row: OFA's `gt_objects` strings (`objects`), else the synthetic world's boxes' labels."""
    names = [o for o in raw.get("objects") or [] if isinstance(o, str)]
    return names or [label for _, label in detections(raw)]
