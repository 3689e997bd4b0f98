"""Input pipeline throughput: is data loading ever the bottleneck of `ofa_tiny` training?

Measures samples/s of the whole caption input pipeline (read, decode, transform, tokenize, collate) through
the real `OFADataModule` + `CaptionTask` training loader on WebDataset shards, side by side with an
OFA-style TSV/base64 reader (`experiments/tsv_loader.py`) on the same images, for 256x256 and 480x480
images and 0, 1, 2 DataLoader workers; plus the `ofa_tiny` training step (forward + backward, batch 8,
256x256, OFA's 59457-token vocabulary) on this machine, for context.

The images are the synthetic shapes world with Gaussian pixel noise (std 10) so that JPEG sizes are those of
photos (about 2.6 bits per pixel at quality 90); each is stored at the task's image size. The TSV is written
first (OFA's caption layout, base64 images) and converted to shards with `ofa-convert-data caption`, so both
readers get identical image bytes. Rates are steady state (the first `max(1, workers)` batches, i.e. worker
start and shuffle-buffer fill, are not timed) and the best of `--repeats` passes (the machine may be shared).

    .venv/bin/python experiments/bench_data.py             # full: 1024 images per size, 5 model steps
    .venv/bin/python experiments/bench_data.py --quick     # 128 images per size, 2 model steps
"""
from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ofa.datamodules.convert import convert_tsv
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.datamodules.synthetic import SyntheticConfig, ensure_synthetic_dataset, make_sample
from tsv_loader import build_tsv_loader, write_caption_tsv  # experiments/tsv_loader.py: the baseline reader
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tokenizer import OFATokenizer, build_tokenizer

OFA_VOCAB = 59457


# ---- data ----------------------------------------------------------------------------------------------
def photo_like_images(size: int, n: int) -> Iterable[tuple[str, str, str, bytes]]:
    """`(uniq_id, image_id, caption, jpeg)` rows: synthetic scenes + pixel noise, JPEG quality 90."""
    cfg, rng = SyntheticConfig(image_size=size), np.random.default_rng(size)
    for i in range(n):
        record, jpeg = make_sample(cfg, "train", i)
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
        noisy = (pixels + rng.normal(0, 10, pixels.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        yield str(i), record["id"], record["captions"][0], buf.getvalue()


def prepare_data(workdir: Path, size: int, n: int) -> tuple[Path, str, float]:
    """Write the TSV and convert it to 8 shards; returns (tsv, shard pattern, mean JPEG bits per pixel)."""
    rows = list(photo_like_images(size, n))
    bpp = 8 * sum(len(r[3]) for r in rows) / (n * size * size)
    tsv = workdir / f"caption_{size}.tsv"
    write_caption_tsv(rows, tsv)
    with open(os.devnull, "w") as quiet:
        summary = convert_tsv("caption", [tsv], workdir / f"shards_{size}", split="train",
                              shard_size=max(1, n // 8), log=quiet)
    return tsv, str(workdir / f"shards_{size}" / summary["pattern"]), bpp


def build_task(tokenizer: OFATokenizer, size: int) -> CaptionTask:
    return CaptionTask(tokenizer, CaptionConfig(image_size=size, meteor=False))


# ---- measurements -------------------------------------------------------------------------------------
def samples_per_sec(loader: Iterable[dict], warmup: int) -> float:
    """Steady-state samples/s: batches after the first `warmup` ones."""
    samples, start = 0, None
    for i, batch in enumerate(loader):
        if i == warmup - 1:
            start = time.perf_counter()
        elif i >= warmup:
            samples += len(batch["id"])
    if start is None or not samples:
        raise RuntimeError("too few batches to time: use more images")
    return samples / (time.perf_counter() - start)


def shard_rate(pattern: str, task: CaptionTask, n: int, batch: int, workers: int) -> float:
    dm = OFADataModule([TaskSource(task, train_shards=pattern)],
                       LoaderConfig(batch_size=batch, num_workers=workers, batches_per_epoch=n // batch,
                                    shuffle_buffer=1000, seed=0))
    rate = samples_per_sec(dm.train_dataloader(), max(1, workers))
    assert sum(dm.skip_counts().values()) == 0, dm.skip_counts()
    return rate


def tsv_rate(tsv: Path, task: CaptionTask, batch: int, workers: int) -> float:
    loader = build_tsv_loader(tsv, task, batch_size=batch, num_workers=workers, pad_id=task.tokenizer.pad)
    return samples_per_sec(loader, max(1, workers))


def model_rate(batch: dict, tokenizer: OFATokenizer, steps: int, device: str = "cpu") -> float:
    """ofa_tiny forward + backward (+ zero_grad) samples/s on one collated pipeline batch."""
    cfg = OFAConfig.from_preset("ofa_tiny", vocab_size=OFA_VOCAB, pad_token_id=tokenizer.pad,
                                bos_token_id=tokenizer.bos, eos_token_id=tokenizer.eos)
    model = OFAModel(cfg).train().to(device)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"],
                       batch["patch_masks"])  # (B, T, V)
        F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=tokenizer.pad).backward()

    step()  # warm-up
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * len(batch["id"]) / (time.perf_counter() - start)


# ---- report --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: Path) -> None:
    tokenizer = build_tokenizer("trained", ensure_synthetic_dataset(
        workdir / "tokenizer", num_train=8, num_val=8, num_test=8, image_size=32, shard_size=8))
    rows, model_sps = [], None
    for size in args.sizes:
        tsv, pattern, bpp = prepare_data(workdir, size, args.images)
        task = build_task(tokenizer, size)
        for workers in args.workers:
            shards = max(shard_rate(pattern, task, args.images, args.batch, workers) for _ in range(args.repeats))
            baseline = max(tsv_rate(tsv, task, args.batch, workers) for _ in range(args.repeats))
            rows.append((size, bpp, workers, shards, baseline))
            print(f"  {size}px workers={workers}: shards {shards:.0f}/s, tsv {baseline:.0f}/s", flush=True)
        if size == 256:
            batch = next(iter(build_tsv_loader(tsv, task, args.batch, 0, tokenizer.pad)))
            model_sps = model_rate(batch, tokenizer, args.steps, args.model_device)
    print_table(rows, model_sps, args)


def print_table(rows: list[tuple], model_sps: float | None, args: argparse.Namespace) -> None:
    print(f"\n{args.images} images per size, batch {args.batch}, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs\n")
    vs_model = " | shards / ofa_tiny step" if model_sps else ""
    print(f"| image | JPEG bits/px | workers | shards + OFADataModule (samples/s) | TSV/base64 (samples/s) "
          f"| shards / TSV{vs_model} |")
    print("|---|---|---|---|---|---|" + ("---|" if model_sps else ""))
    for size, bpp, workers, shards, baseline in rows:
        extra = f" | {shards / model_sps:.1f}x" if model_sps else ""
        ratio = shards / baseline
        print(f"| {size}x{size} | {bpp:.1f} | {workers} | {shards:.0f} | {baseline:.0f} | {ratio:.2f}{extra} |")
    if model_sps:
        print(f"\nofa_tiny training step on {args.model_device} (forward + backward, batch {args.batch}, 256x256, "
              f"vocab {OFA_VOCAB}): {model_sps:.1f} samples/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 images per size, 2 model steps")
    parser.add_argument("--images", type=int, default=None, help="images per size (default 1024; quick 128)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 480])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed ofa_tiny steps (default 5; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many passes (default 3; quick 1)")
    parser.add_argument("--model-device", default="cpu", help="device of the ofa_tiny step (e.g. cuda)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    args = parser.parse_args(argv)
    args.images = args.images or (128 if args.quick else 1024)
    args.steps = args.steps or (2 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 3)
    random.seed(0)
    torch.manual_seed(0)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
            run(args, Path(tmp))


if __name__ == "__main__":
    main()
