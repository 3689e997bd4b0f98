"""CPU throughput of the OFA model core: training step, beam-5 and greedy generation.

Question: how fast is `ofa_tiny` on a small CPU box (2 threads), and how much memory does it take?
Default setting (the issue's): batch 8, 256x256 images, source 32 tokens, target 20, 20 generated tokens.

    .venv/bin/python experiments/bench_model.py                 # full table (a few minutes)
    .venv/bin/python experiments/bench_model.py --steps 1       # quick check that it runs

Times are medians over the timed calls (a busy machine gives outliers). Peak memory is the process's
resident-set high-water mark per phase (reset through /proc/self/clear_refs
where Linux allows it; otherwise the high-water mark since start).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel

PAD, BOS, EOS, VOCAB = 1, 0, 2, 59457


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(b: int, image: int, src_len: int, tgt_len: int) -> dict:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 50000, (b, src_len), generator=g)
    src[:, 0], src[:, -1] = BOS, EOS
    tgt = torch.randint(4, 50000, (b, tgt_len + 1), generator=g)
    tgt[:, 0] = BOS
    return {"src_tokens": src, "prev_output_tokens": tgt[:, :-1], "target": tgt[:, 1:],
            "patch_images": torch.randn(b, 3, image, image, generator=g), "patch_masks": torch.ones(b, dtype=torch.bool)}


def timed(fn, steps: int) -> tuple[float, float]:
    """Median seconds per call (after one warm-up call) and the peak RSS in MB during the timed calls."""
    fn()
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_rss_mb()


def train_step(model: OFAModel, batch: dict):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"], batch["patch_masks"])
        F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=PAD).backward()
    return step


def generate_step(model: OFAModel, batch: dict, beam: int, new_tokens: int):
    from ofa.modules.generation import GenerationConfig, SequenceGenerator

    cfg = GenerationConfig(beam_size=beam, max_len_b=new_tokens, min_len=new_tokens)
    generator = SequenceGenerator(model, cfg, pad=PAD, bos=BOS, eos=EOS)

    @torch.no_grad()
    def step() -> None:
        generator.generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
    return step


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ofa_tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--tgt-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="timed calls per phase (after one warm-up)")
    p.add_argument("--no-generation", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset(args.preset, vocab_size=VOCAB))
    batch = make_batch(args.batch, args.image_size, args.src_len, args.tgt_len)
    phases = {"train step (fwd+bwd)": lambda: train_step(model.train(), batch)}
    try:
        import ofa.modules.generation  # noqa: F401
        have_generation = not args.no_generation
    except ImportError:
        have_generation = False
    if have_generation:
        phases["beam-5 generation"] = lambda: generate_step(model.eval(), batch, 5, args.tgt_len)
        phases["greedy generation"] = lambda: generate_step(model.eval(), batch, 1, args.tgt_len)
    results = {}
    for name, make in phases.items():
        secs, peak = timed(make(), args.steps)
        results[name] = {"samples_per_s": args.batch / secs, "s_per_batch": secs, "peak_rss_mb": peak}
    print_table(args, results)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    return results


def print_table(args: argparse.Namespace, results: dict) -> None:
    print(f"\n{args.preset}, {args.threads} threads, batch {args.batch}, {args.image_size}px, "
          f"src {args.src_len}, tgt {args.tgt_len}, {args.steps} timed steps, torch {torch.__version__}")
    print(f"| {'phase':<22} | {'samples/s':>9} | {'s/batch':>8} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 13}|")
    for name, r in results.items():
        print(f"| {name:<22} | {r['samples_per_s']:>9.2f} | {r['s_per_batch']:>8.2f} | {r['peak_rss_mb']:>11.0f} |")


if __name__ == "__main__":
    main()
