"""`OFA`: a loaded model + vocabulary + the tasks' preprocessing, asked things in plain Python.

    import ofa
    model = ofa.from_pretrained("outputs/<run>/<time>/checkpoints/best.ckpt")  # or a folder / .pt / HF dir
    model.caption(["cat.jpg", "dog.jpg"])                     # ["a cat on a sofa", ...]
    model.vqa("cat.jpg", "what colour is the sofa?")          # "red"
    model.ground("cat.jpg", "the cat")                        # [x0, y0, x1, y1] in the image's pixels

Every call runs the task's own code (`ofa.tasks`): `preprocess` builds the sample (prompt, image transform,
decoder prompt), `collate` batches it, and the task's decoding (its `GenerationConfig`, tries, bin
constraint, all-candidate scoring) answers. Task settings: the task's defaults < what the checkpoint
carries (`ofa.api.load`) < `from_pretrained(image_size=...)` < keyword arguments of the call, which are
fields of `GenerationConfig` (`beam_size=1`, `max_len_b=8`, ...). A single image (not a list) gives a single
answer.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image

from ofa.api.images import ImageLike, to_image
from ofa.api.load import TASKS_FILE, load_task_settings, load_tokenizer, read_source
from ofa.checkpoint import load_state_dict, save_platform
from ofa.datamodules.collate import collate
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.modules.model import OFAModel
from ofa.tasks import TASKS, Task
from ofa.tokenizer import OFATokenizer

GENERATION_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))
IMAGE_TASKS = ("caption", "vqa", "grounding", "snli_ve", "image_classify")


def from_pretrained(path: str | Path, **kwargs: Any) -> OFA:
    """`OFA.from_pretrained` (a platform folder, a run's `.ckpt`, an official fairseq `.pt`, an HF-port folder)."""
    return OFA.from_pretrained(path, **kwargs)


class OFA:
    """A model ready to answer (module docstring)."""

    def __init__(self, model: OFAModel, tokenizer: OFATokenizer, task_settings: dict[str, dict] | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.task_settings = {k: dict(v) for k, v in (task_settings or {}).items()}
        self.batch_size = batch_size
        self._tasks: dict[str, Task] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer: str | Path | None = None, ema: bool = False,
                        device: str | torch.device | None = None, image_size: int | None = None,
                        batch_size: int = 8) -> OFA:
        """Load any checkpoint kind (`ofa.api.load`); `tokenizer`: the vocabulary of a checkpoint that
        carries none (an official `.pt`); `ema`: its EMA weights; `image_size`: the square input size of
        every image task (the size the model was fine-tuned at), over what the checkpoint says."""
        ckpt = read_source(path, ema)
        tok = load_tokenizer(ckpt, tokenizer)
        model = OFAModel(ckpt.config)
        load_state_dict(model, ckpt.state_dict)
        settings = load_task_settings(ckpt)
        if image_size:
            for name in IMAGE_TASKS:
                size = {"image_size": image_size, **({"max_image_size": image_size} if name == "grounding" else {})}
                settings[name] = {**settings.get(name, {}), **size}
        return cls(model, tok, settings, device, batch_size)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """`model.safetensors` + `ofa_config.json` + `tokenizer.json` (`ofa.checkpoint.save_platform`) and
        `tasks.json` (the task settings); `from_pretrained(out_dir)` gives this object back, bit for bit."""
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_json = self.tokenizer.save(Path(tmp) / "tokenizer.json").read_text("utf-8")
        out = save_platform(self.model, self.model.cfg, out_dir, tokenizer_json)
        (out / TASKS_FILE).write_text(json.dumps(self.task_settings, indent=1, sort_keys=True) + "\n")
        return out

    def to(self, device: str | torch.device) -> OFA:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    # ---------------------------------------------------------------- tasks
    def task(self, name: str, **settings: Any) -> Task:
        """The task `name` with the settings chain of the module docstring (`generation` as a dict merges
        field by field); built once per distinct settings."""
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
        merged = OmegaConf.merge(self.task_settings.get(name, {}), settings)
        key = f"{name}:{json.dumps(OmegaConf.to_container(merged), sort_keys=True, default=str)}"
        if key not in self._tasks:
            from ofa.schemas import task_config_class

            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(task_config_class(TASKS[name])), merged))
            self._tasks[key] = TASKS[name](self.tokenizer, cfg)
        return self._tasks[key]

    def _run(self, task: Task, raws: list[dict], answer: Callable[[dict], list]) -> list:
        """`task.preprocess` each raw sample ("val": no augmentation), collate `batch_size` at a time, answer."""
        out: list = []
        for start in range(0, len(raws), self.batch_size):
            samples = [task.preprocess(raw, "val") for raw in raws[start:start + self.batch_size]]
            with torch.no_grad():
                out += answer(to_device(collate(samples, self.tokenizer.pad), self.device))
        return out

    # ---------------------------------------------------------------- high-level calls
    def caption(self, images: ImageLike | Sequence[ImageLike], **generation: Any) -> str | list[str]:
        """A caption per image (beam 5, at most 16 tokens, no repeated 3-grams unless overridden)."""
        pics, single = as_list(images)
        task = self.task("caption", **generation_settings(generation))
        raws = [{"id": str(i), "image": to_image(p), "captions": ["-"]} for i, p in enumerate(pics)]
        answers = self._run(task, raws, lambda b: [r["prediction"] for r in task.evaluate(self.model, b, {})])
        return answers[0] if single else answers

    def vqa(self, images: ImageLike | Sequence[ImageLike], questions: str | Sequence[str],
            answers: Sequence[str] | None = None, **generation: Any) -> str | list[str]:
        """An answer per (image, question); one question may serve every image. With candidate `answers`
        (or those the checkpoint carries) the task's closed-set inference picks one; without, the answer is
        generated freely after the question (beam search, the question forced as prefix)."""
        pics, single = as_list(images)
        qs = [questions] * len(pics) if isinstance(questions, str) else list(questions)
        check_lengths(pics, qs, "questions")
        settings = generation_settings(generation)
        if answers is not None:
            settings["answers"] = list(answers)
        closed = bool(settings.get("answers") or self.task_settings.get("vqa", {}).get("answers"))
        task = self.task("vqa", **settings, **({} if closed else {"use_constraint": False}))
        raws = [{"id": str(i), "image": to_image(p), "vqa": [{"question": q, "answers": {"-": 1.0}}]}
                for i, (p, q) in enumerate(zip(pics, qs))]
        if not closed:
            decide = lambda b: open_vqa(task, self.model, b)  # noqa: E731
        elif task.cfg.inference == "allcand":
            decide = lambda b: task.predict(self.model, b)  # noqa: E731
        else:
            decide = lambda b: task.beam_search(self.model, b)  # noqa: E731
        out = self._run(task, raws, decide)
        return out[0] if single else out

    def ground(self, images: ImageLike | Sequence[ImageLike], phrases: str | Sequence[str],
               **generation: Any) -> list[float] | list[list[float]]:
        """The box `[x0, y0, x1, y1]` of each phrase, in the pixels of its input image, with x0 <= x1 and y0 <= y1: the
        box spanned by the two decoded corners (a weakly trained model can decode the second corner above or left of
        the first; the task's evaluation scores the corners as decoded, as OFA does)."""
        pics, single = as_list(images)
        texts = [phrases] * len(pics) if isinstance(phrases, str) else list(phrases)
        check_lengths(pics, texts, "phrases")
        task = self.task("grounding", **generation_settings(generation))
        raws = [{"id": str(i), "image": to_image(p), "refs": [{"text": t, "box": [0.0, 0.0, 1.0, 1.0]}]}
                for i, (p, t) in enumerate(zip(pics, texts))]
        boxes = self._run(task, raws, lambda b: ordered_corners(task.predict_boxes(self.model, b)).tolist())
        return boxes[0] if single else boxes

    def classify(self, images: ImageLike | Sequence[ImageLike], labels: Sequence[str] | None = None
                 ) -> str | list[str]:
        """The best of `labels` (or the checkpoint's classes) per image: every label scored as a whole."""
        pics, single = as_list(images)
        settings = {"classes": list(labels)} if labels is not None else {}
        task = self.task("image_classify", **settings)
        try:
            first = task.candidates.answers[0]
        except ValueError:
            raise ValueError("classify needs labels=[...]: the checkpoint carries no classes") from None
        raws = [{"id": str(i), "image": to_image(p), "label": first} for i, p in enumerate(pics)]
        out = self._run(task, raws, lambda b: task.predict(self.model, b))
        return out[0] if single else out

    def generate(self, images: ImageLike | Sequence[ImageLike] | None, instruction: str | Sequence[str],
                 **generation: Any) -> str | list[str]:
        """Free text for any instruction (OFA's prompts, e.g. `" what does the region describe? region:
        <bin_..>"`): the caption task's sample with the instruction as its prompt and its decoding, the text
        returned as decoded. `images=None`: text-only instructions."""
        texts = [instruction] if isinstance(instruction, str) else list(instruction)
        pics, single = as_list(images) if images is not None else ([None] * len(texts), isinstance(instruction, str))
        texts = texts * len(pics) if len(texts) == 1 else texts
        check_lengths(pics, texts, "instructions")
        settings = generation_settings(generation)
        samples = [self._instruction_sample(p, t, settings, i) for i, (p, t) in enumerate(zip(pics, texts))]
        generator = self.task("caption", **settings).generator(self.model)
        out = []
        for start in range(0, len(samples), self.batch_size):
            batch = to_device(collate(samples[start:start + self.batch_size], self.tokenizer.pad), self.device)
            with torch.no_grad():
                hyps = generator.generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
            out += [self.tokenizer.decode(h[0].tokens.tolist()).strip() if h else "" for h in hyps]
        return out[0] if single else out

    def _instruction_sample(self, image: ImageLike | None, text: str, settings: dict, index: int) -> Any:
        task = self.task("caption", prompt=text if text.startswith(" ") else " " + text, **settings)
        if image is not None:
            return task.preprocess({"id": str(index), "image": to_image(image), "captions": ["-"]}, "val")
        source = task.encode_text(task.cfg.prompt, bos=True, eos=True)
        return task.make_sample({"id": str(index)}, source, torch.zeros(0, dtype=torch.long), None)

    def text_to_image(self, prompts: str | Sequence[str], vqgan: str | Path | None = None, samples: int = 4,
                      scorer: str | None = None, return_all: bool = False, code_image_size: int | None = None,
                      **generation: Any
                      ) -> Image.Image | list[Image.Image] | list[list[Image.Image]]:
        """An image per prompt (`samples` sampled, reranked by `scorer` (`ofa-generate-image --scorer`
        syntax) when given, the best kept; `return_all`: all, best first), `code_image_size` pixels a side (the
        model's by default). Needs the VQGAN the model's image codes come from: `vqgan` (a folder with
        model.yaml + last.ckpt) or the checkpoint's."""
        from ofa.generate_image import generate, parse_scorer, to_pil

        texts, single = as_list(prompts)
        vq = vqgan or self.task_settings.get("image_gen", {}).get("vqgan")
        if not vq:
            raise ValueError("text_to_image needs the VQGAN of the model's image codes: pass vqgan=DIR")
        gen = {"beam_size": samples, **generation}
        size = code_image_size or self.model.cfg.code_image_size
        task = self.task("image_gen", vqgan=str(Path(vq).expanduser()), code_image_size=size,
                         scorer=dataclasses.asdict(parse_scorer(scorer)), **generation_settings(gen))
        images = generate(self.model, task, texts)  # (P, K, 3, H, W) in [0, 1], best first
        out = [[to_pil(im) for im in row] if return_all else to_pil(row[0]) for row in images]
        return out[0] if single else out


# -------------------------------------------------------------------- helpers
def generation_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a call as task settings (`{"generation": {...}}`); unknown names refused."""
    unknown = sorted(set(overrides) - set(GENERATION_FIELDS))
    if unknown:
        raise TypeError(f"unknown decoding setting(s) {unknown}; use fields of GenerationConfig: {GENERATION_FIELDS}")
    return {"generation": dict(overrides)} if overrides else {}


def ordered_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) `[x0, y0, x1, y1]` -> the same boxes with x0 <= x1 and y0 <= y1 (the box the two corners span)."""
    lo, hi = torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])
    return torch.cat([lo, hi], dim=1)


def as_list(items: Any) -> tuple[list, bool]:
    """`(items as a list, True if a single item was given)`."""
    if isinstance(items, (list, tuple)):
        return list(items), False
    return [items], True


def check_lengths(images: list, texts: list, what: str) -> None:
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} {what}; give one per image or a single one")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch (and lists of tensors: decoder prompts) on `device`."""
    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return [t.to(device) for t in v]
        return v

    return {k: move(v) for k, v in batch.items()}


def open_vqa(task: Task, model: OFAModel, batch: dict[str, Any]) -> list[str]:
    """VQA without candidates: beam search after the forced question (the task's decoding, no trie)."""
    tok = task.tokenizer
    generator = SequenceGenerator(model, task.cfg.generation, pad=tok.pad, bos=tok.bos, eos=tok.eos)
    prefix = [p[1:] for p in batch["decoder_prompts"]]  # without <s>
    hyps = generator.generate(batch["src_tokens"], batch.get("patch_images"), batch.get("patch_masks"),
                              prefix_tokens=prefix)
    return [task.decode_answer(h[0].tokens[h[0].prefix_len:]) if h else "" for h in hyps]
