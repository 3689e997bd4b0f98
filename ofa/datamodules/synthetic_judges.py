"""The synthetic world's judge and CLIP-style scorer, trained once on its real text-to-image images.

`<synthetic_dir>/image_gen/judge/` (`ofa.tasks.image_judge.ImageJudge`: colour, shape, size and grid cell of a
single-object image) and `<synthetic_dir>/image_gen/scorer/` (`ofa.tasks.image_scorers.SyntheticClipScorer`:
image-caption cosine, for reranking). Both learn from the training split only; the judge's accuracy on the
real test images is written to `judge/summary.json` (`real_test`), the ceiling of judged accuracy.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from ofa.datamodules.generated_dir import ensure_generated


@dataclass(frozen=True)
class JudgeRecipe:
    """What determines the trained judge and scorer (changing it retrains them)."""

    judge_steps: int = 300
    judge_batch_size: int = 32
    scorer_steps: int = 200
    scorer_batch_size: int = 64
    seed: int = 0


def read_world(shard: Path) -> tuple[torch.Tensor, list[dict], list[str]]:
    """(N, 3, H, W) uint8 images, their attribute dicts and canonical captions from one image_gen shard."""
    images, attributes, captions = [], [], []
    with tarfile.open(shard) as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".json"))
        for name in names:
            record = json.loads(tar.extractfile(name).read())
            image = Image.open(io.BytesIO(tar.extractfile(name[:-5] + ".png").read())).convert("RGB")
            w, h = image.size
            images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1))
            attributes.append(record["objects"][0])
            captions.append(record["captions"][0])
    return torch.stack(images), attributes, captions


def train_judge_and_scorer(world: Path, out: Path, recipe: JudgeRecipe) -> dict:
    """Train both on `world/train-*.tar`, save them under `out/judge` and `out/scorer`; the judge's real
    test accuracy."""
    from ofa.tasks.image_judge import encode_labels, judge_accuracy, train_judge
    from ofa.tasks.image_scorers import train_synthetic_scorer

    images, attributes, captions = read_world(world / "train-000000.tar")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest (12 s + 16 s idle, 2 cores)
    try:
        judge = train_judge(images, encode_labels(attributes), steps=recipe.judge_steps,
                            batch_size=recipe.judge_batch_size, seed=recipe.seed)
        scorer = train_synthetic_scorer(images, captions, steps=recipe.scorer_steps,
                                        batch_size=recipe.scorer_batch_size, seed=recipe.seed)
    finally:
        torch.set_num_threads(threads)
    test_images, test_attributes, _ = read_world(world / "test-000000.tar")
    with torch.no_grad():
        real = judge_accuracy(judge.predict(test_images), encode_labels(test_attributes))
    judge.save(out / "judge")
    scorer.save(out / "scorer")
    return real


def ensure_synthetic_judges(synthetic_dir: str | os.PathLike, recipe: JudgeRecipe | None = None) -> tuple[Path, Path]:
    """Train (once) and return the judge and scorer dirs of the world at `synthetic_dir`."""
    recipe = recipe or JudgeRecipe()
    world = Path(synthetic_dir).expanduser().resolve() / "image_gen"
    config = {**asdict(recipe), "world": json.loads((world / "summary.json").read_text("utf-8"))["config"]}

    def generate(tmp: Path) -> None:
        real = train_judge_and_scorer(world, tmp, recipe)
        summary = {"config": config, "real_test": real}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    out = ensure_generated(world / "judges", config, generate)
    return out / "judge", out / "scorer"
