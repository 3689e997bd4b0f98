"""Text-to-image (spec §3.6, §7): `tasks/mm_tasks/image_gen.py` + `data/mm_data/image_gen_dataset.py` of OFA.

Source `<s> what is the complete image? caption: {caption} </s>` (the caption's first `max_src_length` words,
as written: OFA neither lower-cases nor strips it); no image (OFA's encoder gets none). Target: the
`(code_image_size / 8)^2` row-major VQGAN codes of the image as `<code_i>` tokens + `</s>`, `code_mask`
set (the decoder's 2-D image positions and code layer norm), logits restricted to the code tokens
(`constraint_range`) in the loss and in decoding.

Evaluation (OFA's validation): per caption `generation.beam_size` independent samples (top-k 256,
temperature 1, seed 42; every step a code, then `</s>`), decoded to pixels by the VQGAN at `vqgan`, reranked
by a CLIP-style scorer (`scorer`: OpenAI CLIP through open_clip from a weights file, or the synthetic
world's own scorer), the best image scored: `clip` (its cosine with the caption, OFA's CLIP score),
`judge_*` (the synthetic world's judge: does it show the caption's colour, shape and cell), `fid`
(`fid=judge`: on the judge's features; `fid=inception`: torch-fidelity's InceptionV3 from
`inception_weights`) against the real images of the split. docs/IMAGE_EVAL.md says how each is computed.
A grid of the first `grid_size` captions' best images goes to `image_dir` (and W&B) after each evaluation.
Stage 2 (`task.scst.enabled`, spec §4.3): SCST with 5 sampled images per caption (top-k 256), reward
`2.5 * cos(image, caption)` from the scorer, leave-one-out baseline (`ofa.tasks.scst`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.modules.generation import GenerationConfig
from ofa.tasks.base import Sample, Task, TaskConfig
from ofa.tasks.image_codes import (check_code_grid, code_grid, code_range, code_tokens, decode_codes,
                                   hypothesis_codes, load_tokenizer_model)
from ofa.tasks.image_eval import ImageEvaluator, ScorerConfig, attributes_of, real_image
from ofa.tasks.scst import ScstConfig, SelfCriticalLoss

CLIP_REWARD_SCALE = 2.5  # OFA's clip_scst_reward_criterion


def image_gen_generation() -> GenerationConfig:
    """OFA's `{"beam": 24, "min_len": 1024, "max_len_b": 1024, "sampling_topk": 256, "temperature": 1.0}`,
    seed 42; the lengths follow the code grid (`ImageGenTask.generator`)."""
    return GenerationConfig(beam_size=24, sampling=True, sampling_topk=256, temperature=1.0, seed=42,
                            gen_code=True, return_all=True, min_len=1024, max_len_b=1024)


def image_gen_scst() -> ScstConfig:
    """OFA's stage 2: 5 samples per caption, top-k 256, temperature 1 (lengths follow the code grid)."""
    return ScstConfig(candidates=5, generation=GenerationConfig(beam_size=5, sampling=True, sampling_topk=256,
                                                                return_all=True, min_len=1024, max_len_b=1024))


@dataclass
class ImageGenConfig(TaskConfig):
    """Text-to-image settings (`task/image_gen.yaml`); `code_image_size` = pixels of a generated image."""

    prompt: str = " what is the complete image? caption: {}"
    max_src_length: int = 64  # caption words
    code_image_size: int = 256  # 32x32 codes of an 8x VQGAN
    label_smoothing: float = 0.0
    vqgan: str | None = None  # dir with model.yaml + last.ckpt: decodes codes for evaluation (None: loss only)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    judge: str | None = None  # the synthetic world's judge (ofa/tasks/image_judge.py): judged accuracy
    fid: str = "none"  # none | judge | inception
    inception_weights: str | None = None  # torch-fidelity's pt_inception-2015-12-05 weights (fid=inception, IS)
    image_dir: str | None = None  # grids of generated images per evaluation (None: not written)
    grid_size: int = 16
    generation: GenerationConfig = field(default_factory=image_gen_generation)
    scst: ScstConfig = field(default_factory=image_gen_scst)  # stage 2: CLIP-reward SCST (needs vqgan, scorer)


class ImageGenTask(Task):
    """Caption in, image codes out (module docstring)."""

    name = "image_gen"
    monitor = "clip"
    config_class = ImageGenConfig

    def __init__(self, tokenizer: Any, cfg: ImageGenConfig) -> None:
        super().__init__(tokenizer, cfg)
        self.cfg: ImageGenConfig = cfg
        self.num_codes = code_grid(cfg.code_image_size) ** 2
        self.evaluator = ImageEvaluator(cfg.scorer, cfg.judge, cfg.fid, cfg.inception_weights, cfg.image_dir,
                                        cfg.grid_size)

    # ---- data side -------------------------------------------------------------------------
    def preprocess(self, raw: dict[str, Any], split: str) -> Sample | None:
        """Raw sample with `captions` and `codes` -> `Sample`; None (skipped, counted) without them or with
        codes that are not `num_codes` valid indices."""
        captions = [c for c in raw.get("captions") or [] if isinstance(c, str) and c.strip()]
        target = code_tokens(raw.get("codes"), self.tokenizer, self.num_codes)
        if not captions or target is None:
            return None
        caption = " ".join(self.pick(captions, split).strip().split()[: self.cfg.max_src_length])
        meta: dict[str, Any] = {"caption": caption}
        if split != "train":
            meta.update(attributes=attributes_of(raw), real=real_image(raw, self.cfg.code_image_size))
        return self.make_sample(raw, self.source(caption), target, None, code_mask=True, meta=meta)

    def source(self, caption: str) -> Tensor:
        """(S,) `<s> what is the complete image? caption: {caption} </s>` (the caption as given)."""
        return self.encode_text(self.cfg.prompt.format(caption), bos=True, eos=True)

    def constraint_range(self) -> tuple[int, int]:
        return code_range(self.tokenizer, self.cfg.vqgan)

    def check(self, model_cfg: Any, tokenizer: Any, prefix: str = "task") -> None:
        check_code_grid(prefix, self.cfg.code_image_size, model_cfg)
        limit = getattr(model_cfg, "max_source_positions", None)
        if limit and self.cfg.max_src_length + 2 > limit:
            raise RunConfigError(f"{prefix}.max_src_length={self.cfg.max_src_length} (+2 special tokens) "
                                 f"exceeds model.max_source_positions={limit}")
        if tokenizer.num_codes < 1:
            raise RunConfigError(f"{prefix}: the tokenizer has no <code_i> tokens")

    # ---- SCST (stage 2) ----------------------------------------------------------------------
    def training_criterion(self) -> SelfCriticalLoss | None:
        if not self.cfg.scst.enabled:
            return None
        if not self.cfg.vqgan or self.cfg.scorer.kind == "none":
            raise RunConfigError("task.scst.enabled for image_gen needs task.vqgan and a task.scorer")
        self.code_generation(self.cfg.scst.generation)
        tok = self.tokenizer
        return SelfCriticalLoss(self.cfg.scst, self.clip_rewards, pad=tok.pad, bos=tok.bos, eos=tok.eos,
                                constraint_range=self.constraint_range())

    def clip_rewards(self, candidates: list[list[Tensor]], batch: dict[str, Any]) -> Tensor:
        """`2.5 * cos(image, caption)` of every candidate's decoded image: (B, K)."""
        codes = torch.stack([hypothesis_codes(c, self.tokenizer, self.num_codes) for row in candidates for c in row])
        images = decode_codes(load_tokenizer_model(str(Path(self.cfg.vqgan).expanduser())), codes)  # (B*K, 3, H, W)
        k = len(candidates[0])
        captions = [m["caption"] for m in batch["meta"] for _ in range(k)]
        return CLIP_REWARD_SCALE * self.evaluator.scorer().score(images, captions).cpu().view(len(candidates), k)

    # ---- evaluation side -------------------------------------------------------------------
    def code_generation(self, gen: GenerationConfig) -> GenerationConfig:
        """Every step a code (`gen_code`, the code range), exactly `num_codes` codes then `</s>`."""
        gen.constraint_range, gen.gen_code = code_range(self.tokenizer, self.cfg.vqgan), True
        gen.min_len, gen.max_len_a, gen.max_len_b = self.num_codes, 0.0, self.num_codes
        return gen

    def generator(self, model: nn.Module) -> Any:
        """Sampling with `code_generation`'s lengths and range."""
        self.code_generation(self.cfg.generation)
        return super().generator(model)

    def build_metrics(self) -> dict[str, Any]:
        return self.evaluator.build_metrics()

    def generate_codes(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """(B, K, num_codes) code indices of K samples per caption (K = generation.beam_size)."""
        hyps = self.generator(model).generate(batch["src_tokens"], None, batch["patch_masks"],
                                              code_masks=batch["code_masks"])
        k = self.cfg.generation.beam_size
        out = torch.zeros(len(hyps), k, self.num_codes, dtype=torch.long)
        for i, sample in enumerate(hyps):
            for j, h in enumerate(sample[:k]):
                out[i, j] = hypothesis_codes(h.tokens, self.tokenizer, self.num_codes)
        return out

    def evaluate(self, model: nn.Module, batch: dict[str, Any], metrics: dict[str, Any]) -> list[dict]:
        """Sample, decode, rerank and score (module docstring); without a VQGAN only the loss is reported."""
        if not self.cfg.vqgan:
            return []
        codes = self.generate_codes(model, batch)  # (B, K, N)
        b, k, n = codes.shape
        images = decode_codes(load_tokenizer_model(str(Path(self.cfg.vqgan).expanduser())), codes.view(b * k, n))
        captions = [m["caption"] for m in batch["meta"]]
        best = self.evaluator.update(images.view(b, k, *images.shape[1:]), captions, batch["meta"], metrics)
        return [{"id": i, "prediction": c, "references": [c], "image": im}
                for i, c, im in zip(batch["id"], captions, best)]

    def end_evaluation(self, split: str, step: int) -> Path | None:
        return self.evaluator.write_grid(split, step)
