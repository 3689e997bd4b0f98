"""CPU throughput of the OFA model core: training step, beam-5 and greedy generation (and the image encoder).

Question: how fast is `ofa_tiny` on a small CPU box (2 threads), and how much memory does it take?
Default setting (the issue's): batch 8, 256x256 images, source 32 tokens, target 20 (teacher forcing),
and generation of exactly 20 tokens + `</s>` (min_len = max_len_b = 20: `</s>` is banned for 20 steps
and forced at step 21, so every call runs 21 decoder steps; the bench checks the lengths).

    .venv/bin/python experiments/bench_model.py                 # full table (a few minutes)
    .venv/bin/python experiments/bench_model.py --steps 1       # quick check that it runs
    .venv/bin/python experiments/bench_model.py --phases train  # one phase
    .venv/bin/python experiments/bench_model.py --phases train --compile inductor  # torch.compile (warm-up: compiling)
    .venv/bin/python experiments/bench_model.py --phases greedy beam5 --compile inductor  # compiled decoder step
    .venv/bin/python experiments/bench_model.py --phases images --steps 7  # the inference ResNet alone
    .venv/bin/python experiments/bench_model.py --phases images --profile 20  # + its costliest operators

The train phase is the paired bench's (../shared/bench_reference/bench_side.py): forward, cross-entropy over
the vocabulary, backward and a `torch.optim.AdamW(model.parameters(), lr=1e-4)` step (PyTorch's default, on
the CPU a per-tensor loop); `--optim fused` steps the fused kernel instead, as `ofa-train` does on the CPU
(`ofa.utils.optim.adamw_kernel`).

`ofa` is imported as installed (the checkout the venv was installed from): to time another checkout, e.g. a
`git worktree` of an earlier commit, run it with `PYTHONPATH=<that checkout>`.

Times are medians over the timed calls (a busy machine gives outliers; the minimum is printed too).
Peak memory is the process's resident-set high-water mark per phase (reset through
/proc/self/clear_refs where Linux allows it; otherwise the high-water mark since start); the phases run
generation first, as memory freed by training stays in the process. For clean per-phase peaks run one
phase per process (`--phases train`).
`--malloc keep` stops glibc from returning large freed blocks to the kernel (no mmap'd chunks, no
trimming), so big tensors reuse pages instead of page-faulting fresh ones on every allocation; the same
as `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736` for any process, and
what `ofa-train` applies to CPU runs (`ofa.train.keep_freed_memory`).
"""

from __future__ import annotations

import argparse
import json
import os
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
            "patch_images": torch.randn(b, 3, image, image, generator=g),
            "patch_masks": torch.ones(b, dtype=torch.bool)}


def timed(fn, steps: int) -> tuple[list[float], float, float]:
    """Seconds per timed call (after one warm-up call), the peak RSS in MB during the timed calls and the
    warm-up call's seconds (with `--compile`: the compilation)."""
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times, peak_rss_mb(), warmup


def train_step(model: OFAModel, batch: dict, optim: str, precision: str = "fp32", layout: str = "channels_last"):
    """The paired bench's step: forward, loss, backward, AdamW (`bench`: PyTorch's default kernel; `fused`).
    Opt-in levers that change the numerics (not the reference model's float32 results; not defaults):
    `precision="bf16"` runs the forward under CPU autocast (bfloat16 matmuls and convolutions: AMX where the CPU
    has it). `layout`: the ResNet's CPU activations, `channels_last` (the module's default) or `contiguous`
    (the reference's layout; the default before 2026-12-07)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if optim == "fused" else {}))
    model.encoder.embed_images.channels_last = layout == "channels_last"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"],
                           batch["patch_masks"])
        F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=PAD).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def generate_step(model: OFAModel, batch: dict, beam: int, new_tokens: int):
    from ofa.modules.generation import GenerationConfig, SequenceGenerator

    cfg = GenerationConfig(beam_size=beam, max_len_b=new_tokens, min_len=new_tokens)
    generator = SequenceGenerator(model, cfg, pad=PAD, bos=BOS, eos=EOS)

    @torch.no_grad()
    def step() -> None:
        hyps = generator.generate(batch["src_tokens"], batch["patch_images"], batch["patch_masks"])
        lengths = {len(h.tokens) for sample in hyps for h in sample}
        assert lengths == {new_tokens + 1}, f"expected {new_tokens} tokens + </s>, got lengths {lengths}"
    return step


def images_step(model: OFAModel, batch: dict):
    """The image path of generation and evaluation alone: the inference ResNet (no autograd, eval mode)."""
    resnet = model.encoder.embed_images

    @torch.no_grad()
    def step() -> None:
        resnet(batch["patch_images"])
    return step


PHASES = ("train", "beam5", "greedy", "images")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ofa_tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--tgt-len", type=int, default=20, help="target length; also the number of generated tokens")
    p.add_argument("--steps", type=int, default=3, help="timed calls per phase (after one warm-up)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--malloc", choices=("default", "keep"), default="default")
    p.add_argument("--optim", choices=("bench", "fused"), default="bench",
                   help="AdamW kernel of the train phase: the paired bench's (PyTorch default) or fused (ofa-train's)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="train phase: float32 (the reference's numerics) or bfloat16 CPU autocast (opt-in)")
    p.add_argument("--layout", choices=("channels_last", "contiguous"), default="channels_last",
                   help="train phase: the ResNet's CPU activations (channels_last: the module's default)")
    p.add_argument("--compile", choices=("none", "inductor", "aot_eager"), default="none",
                   help="torch.compile: the train phase's model forward (module.compile.enabled=true in ofa-train), "
                        "the generation phases' cached decoder step (module.compile.generation=true)")
    p.add_argument("--profile", type=int, default=0,
                   help="then print the N operators (by input shapes) with the most self CPU time in one more call")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    if args.malloc == "keep":
        from ofa.train import keep_freed_memory  # (imports Lightning and Hydra: only when asked)

        if not keep_freed_memory():
            raise SystemExit("--malloc keep needs glibc")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset(args.preset, vocab_size=VOCAB))
    batch = make_batch(args.batch, args.image_size, args.src_len, args.tgt_len)
    if args.compile != "none":  # as OFALitModule does: the forward in place, and the cached decoder step
        if "train" in args.phases:
            model.compile(backend=args.compile)
        if {"beam5", "greedy"} & set(args.phases):
            model.compile_decoding(backend=args.compile)  # dynamic shapes; the warm-up call compiles each shape
    makers = {"train": lambda: train_step(model.train(), batch, args.optim, args.precision, args.layout),
              "beam5": lambda: generate_step(model.eval(), batch, 5, args.tgt_len),
              "greedy": lambda: generate_step(model.eval(), batch, 1, args.tgt_len),
              "images": lambda: images_step(model.eval(), batch)}
    load_before = os.getloadavg()
    results = {}
    for name in sorted(args.phases, key=("images", "beam5", "greedy", "train").index):  # the big training peak last
        step = makers[name]()
        times, peak, warmup = timed(step, args.steps)
        if args.profile:
            print_profile(name, step, args.profile)
        secs = statistics.median(times)
        results[name] = {"samples_per_s": args.batch / secs, "s_per_batch": secs, "min_s_per_batch": min(times),
                         "peak_rss_mb": peak, "warmup_s": warmup}
    load = {"before": load_before, "after": os.getloadavg()}
    print_table(args, results, load)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": load,
                                         "torch": torch.__version__, "results": results}, indent=1))
    return results


def print_profile(name: str, step, rows: int) -> None:
    """`torch.profiler` of one more call: the operators, grouped by input shapes, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(f"\n{name}: one call, top {rows} operators by self CPU time")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows,
                                                             max_name_column_width=40, max_shapes_column_width=80))


def print_table(args: argparse.Namespace, results: dict, load: dict) -> None:
    names = {"train": "train step (fwd+bwd)", "beam5": "beam-5 generation", "greedy": "greedy generation",
             "images": "inference ResNet"}
    print(f"\n{args.preset}, {args.threads} threads, batch {args.batch}, {args.image_size}px, src {args.src_len}, "
          f"tgt {args.tgt_len}, generating exactly {args.tgt_len} tokens + </s>, {args.steps} timed steps, "
          f"malloc {args.malloc}, optim {args.optim}, train {args.precision} {args.layout}, compile {args.compile}, "
          f"torch {torch.__version__}")
    print(f"load average (1 min) before {load['before'][0]:.2f}, after {load['after'][0]:.2f}")
    print(f"| {'phase':<22} | {'samples/s':>9} | {'s/batch':>8} | {'min s':>6} | {'peak RSS MB':>11} "
          f"| {'warm-up s':>9} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 8}|{'-' * 13}|{'-' * 11}|")
    for name, r in sorted(results.items(), key=lambda item: PHASES.index(item[0])):
        print(f"| {names[name]:<22} | {r['samples_per_s']:>9.2f} | {r['s_per_batch']:>8.2f} | "
              f"{r['min_s_per_batch']:>6.2f} | {r['peak_rss_mb']:>11.0f} | {r['warmup_s']:>9.1f} |")


if __name__ == "__main__":
    main()
