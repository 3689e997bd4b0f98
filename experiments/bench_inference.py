"""Inference memory and speed per model size and image size: what `OFA.caption` costs (docs/API.md table).

Question: how long does one image take through the caption path (the task's preprocessing, encoder, beam
search), and how much memory, for ofa_nano ... ofa_huge at OFA's image sizes?

- measured (`--measure`, default nano tiny medium base): a random model of OFA's vocabulary (59457 ids, so
  the output projection costs what it costs in the released models) in a fresh process per (size, image
  size); the caption task's sample of a synthetic image (preprocess -> collate) at batch `--batch`; beam 5,
  no repeated 3-grams, exactly 16 tokens (min_len = max_len_b = 16, so random weights decode as long as a
  real caption may). Median of `--repeat` timed calls after one warm-up, on `--threads` intra-op threads.
  Memory: the process's peak RSS minus its RSS before the model was built (weights + activations +
  allocator slack).
- computed (every size): parameters (counted on the meta device), fp32 / fp16 weight bytes, and the
  activation estimate `act_est` of one batch-1 call: the largest ResNet stage-1 maps (3 tensors of 256 x
  (S/4)^2), one encoder layer's attention scores (2 x heads x L^2) and FFN hidden (L x ffn), with L = (S/16)^2
  + 16 text tokens, plus the decoder's cache (layers x beam x (L + 17) x 2 x d), in fp32.

    flock /tmp/ofa_heavy.lock .venv/bin/python experiments/bench_inference.py > bench_inference.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel

SIZES = ("ofa_nano", "ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge")
OFA_VOCAB = 59457
TEXT_TOKENS, CAPTION_TOKENS, BEAM = 16, 16, 5


def config(size: str) -> OFAConfig:
    return OFAConfig.from_preset(size, vocab_size=OFA_VOCAB)


def computed(size: str, image_size: int) -> dict:
    """Parameters, weight bytes and the activation estimate of the module docstring (bytes)."""
    cfg = config(size)
    with torch.device("meta"):
        params = sum(p.numel() for p in OFAModel(cfg).parameters())
    tokens = (image_size // 16) ** 2 + TEXT_TOKENS
    resnet = 3 * 256 * (image_size // 4) ** 2
    encoder = 2 * cfg.encoder_attention_heads * tokens**2 + tokens * cfg.encoder_ffn_dim
    cache = cfg.decoder_layers * BEAM * (tokens + CAPTION_TOKENS + 1) * 2 * cfg.d_model
    return {"params": params, "fp32_bytes": 4 * params, "fp16_bytes": 2 * params,
            "act_est_bytes": 4 * (max(resnet, encoder) + cache)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(size: str, image_size: int, batch: int, repeat: int, threads: int) -> dict:
    """One (size, image size) in this process: median seconds per call and the memory it added."""
    import io

    from PIL import Image

    from ofa.datamodules.collate import collate
    from ofa.datamodules.synthetic import SyntheticConfig, make_sample
    from ofa.modules.generation import GenerationConfig
    from ofa.tasks.caption import CaptionConfig, CaptionTask
    from ofa.tokenizer import build_tokenizer
    from ofa.datamodules.synthetic import ensure_synthetic_dataset

    torch.set_num_threads(threads)
    tok = build_tokenizer("trained", ensure_synthetic_dataset("data/synthetic"))
    gen = GenerationConfig(beam_size=BEAM, min_len=CAPTION_TOKENS, max_len_b=CAPTION_TOKENS, no_repeat_ngram_size=3,
                           return_all=False)
    task = CaptionTask(tok, CaptionConfig(image_size=image_size, generation=gen))
    _, jpeg = make_sample(SyntheticConfig(image_size=256), "val", 0)
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    before = rss_bytes()
    torch.manual_seed(0)
    model = OFAModel(config(size)).eval()
    generator = task.generator(model)

    def call() -> float:
        start = time.perf_counter()
        samples = [task.preprocess({"id": str(i), "image": image, "captions": ["-"]}, "val") for i in range(batch)]
        b = collate(samples, tok.pad)
        with torch.no_grad():
            hyps = generator.generate(b["src_tokens"], b["patch_images"], b["patch_masks"])
        assert all(len(h[0].tokens) == CAPTION_TOKENS + 1 for h in hyps)
        return time.perf_counter() - start

    call()  # warm-up
    times = [call() for _ in range(repeat)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times), "min_seconds": min(times), "added_bytes": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--measure", nargs="+", default=["ofa_nano", "ofa_tiny", "ofa_medium", "ofa_base"])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[256, 384, 480])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "IMAGE_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child process of one measurement
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch, args.repeat, args.threads)))
        return
    for size in args.sizes:
        for image_size in args.image_sizes:
            row = {"size": size, "image_size": image_size, "batch": args.batch, "threads": args.threads,
                   **computed(size, image_size)}
            if size in args.measure:
                out = subprocess.run([sys.executable, __file__, "--one", size, str(image_size), "--batch",
                                      str(args.batch), "--repeat", str(args.repeat), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
