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
  + 16 text tokens, plus the decoder's cache (layers x beam x (L + 17) x 2 x d), in fp32; and `macs`, the
  multiply-accumulates of one batch-1 call: ResNet stages 1-3 (torchvision's per-stage counts at 224 pixels,
  scaled by (S/224)^2), the encoder over L tokens, the decoder's 17 positions x 5 beams (self-, cross-attention,
  FFN, output projection over the vocabulary) and the cross-attention keys/values. Sizes not measured get
  `est_seconds` = the largest measured size's time at that image size x the ratio of their `macs`.

    flock /tmp/ofa_heavy.lock .venv/bin/python experiments/bench_inference.py > bench_inference.jsonl
    .venv/bin/python experiments/bench_inference.py --table bench_inference.jsonl   # the docs/API.md table
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


# GMACs of a 224-pixel image through the stem + stages 1-3 that OFA keeps: torchvision's whole-network
# counts (1.82, 4.11, 7.83, 11.56) less stage 4 (about 0.46 for resnet18, 0.81 for the bottleneck nets)
RESNET_GMACS_224 = {"resnet18": 1.36, "resnet50": 3.3, "resnet101": 7.0, "resnet152": 10.75}


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
            "act_est_bytes": 4 * (max(resnet, encoder) + cache), "macs": macs(cfg, image_size)}


def macs(cfg: OFAConfig, image_size: int) -> float:
    """Multiply-accumulates of one batch-1 caption call (module docstring)."""
    d, f, v = cfg.d_model, cfg.encoder_ffn_dim, cfg.vocab_size
    tokens, steps = (image_size // 16) ** 2 + TEXT_TOKENS, CAPTION_TOKENS + 1
    scale = 0.6 if cfg.resnet_layers == [1, 1, 1] else 1.0  # ofa_nano: one block per stage
    resnet = RESNET_GMACS_224[cfg.resnet_type] * 1e9 * scale * (image_size / 224) ** 2
    encoder = cfg.encoder_layers * tokens * (4 * d * d + 2 * d * f + 2 * tokens * d)
    per_row = cfg.decoder_layers * (6 * d * d + d * steps + 2 * tokens * d + 2 * d * cfg.decoder_ffn_dim) + d * v
    cross_kv = cfg.decoder_layers * tokens * 2 * d * d
    return resnet + encoder + BEAM * steps * per_row + cross_kv


def table(path: str) -> str:
    """The markdown table of docs/API.md from this script's JSON lines."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    timed = {r["image_size"]: r for r in rows if "seconds" in r}  # the last (largest) measured size per image size
    mb = 2**20
    out = ["| size | params | weights fp32 / fp16 | image | seconds per image | memory | activations (computed) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "seconds" in r:
            sec, mem = f"{r['seconds']:.2f} (measured)", f"{r['added_bytes'] / mb:,.0f} MB (measured)"
        else:
            ref = timed[r["image_size"]]
            sec = f"≈ {ref['seconds'] * r['macs'] / ref['macs']:.0f} (computed)"
            mem = f"≈ {(r['fp32_bytes'] + r['act_est_bytes']) / mb:,.0f} MB (computed)"
        out.append(f"| {r['size']} | {r['params'] / 1e6:.0f} M | {r['fp32_bytes'] / mb:,.0f} / {r['fp16_bytes'] / mb:,.0f}"
                   f" MB | {r['image_size']} | {sec} | {mem} | {r['act_est_bytes'] / mb:,.0f} MB |")
    return "\n".join(out)


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
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of a finished run")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "IMAGE_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
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
