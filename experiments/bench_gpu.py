"""GPU throughput of OFA training and generation: tokens/s and model FLOPs utilisation (MFU), base/large/huge.

Question: how fast do ofa_base, ofa_large and ofa_huge train and generate on one GPU, and how much of the chip's
bf16 peak does a training step use? One short run, made for the first time a GPU machine is lent (the `device`
tool: 15 minutes of device time in all, so the whole script keeps under `--budget-s`, default 420 s, and skips
what would not fit):

    python experiments/bench_gpu.py --json $OUT/bench_gpu.json            # one GPU: base, large, huge
    torchrun --nproc-per-node=8 experiments/bench_gpu.py --fsdp           # several GPUs: FSDP2 (ofa.sharding)
    python experiments/bench_gpu.py --device cpu --models ofa_tiny --steps 1 --batch 2 --image-size 64  # CPU check

Workload: OFA's caption fine-tuning shape (bench_model.py's batch: random images, source 32 tokens, target 20),
images at OFA's fine-tuning size per model (base 384, large and huge 480), OFA's 59,457-token vocabulary.
- train: forward under bf16 autocast (fp32 weights, as `trainer.precision=bf16-mixed`), cross-entropy, backward,
  fused AdamW; with `--fsdp` the model is sharded by `ofa.sharding.shard_model` first. Tokens/s counts target
  tokens; the FLOPs of one step are counted by PyTorch's FlopCounterMode (matmuls, convolutions, attention:
  ResNet, encoder and decoder, forward and backward), so MFU = FLOPs per step / step time / the chip's dense bf16
  peak (table below, or `--peak-tflops`).
- generation: beam 5 and greedy, exactly `--tgt-len` new tokens per sample (bench_model.generate_step), under
  bf16 autocast; tokens/s counts the generated tokens of the batch.
Times are medians of `--steps` timed calls after warm-up; peak memory is torch.cuda.max_memory_allocated. A phase
that runs out of memory is reported as OOM and the script goes on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_model, beside this file
from bench_model import PAD, VOCAB, generate_step, make_batch  # noqa: E402

from ofa.modules.config import OFAConfig  # noqa: E402
from ofa.modules.model import OFAModel  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense (no sparsity), by device-name substring
DEFAULTS = {"ofa_base": (32, 384), "ofa_large": (16, 480), "ofa_huge": (8, 480)}  # batch per device, image size
PHASES = ("train", "beam5", "greedy")


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def setup_distributed(device_kind: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size): torchrun's environment if any, else one process (a 1-rank group for --fsdp)."""
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_kind, local) if device_kind == "cuda" else torch.device(device_kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return device, rank, world


def build_model(preset: str, device: torch.device, fsdp: bool) -> OFAModel:
    torch.manual_seed(0)
    with torch.device(device):
        model = OFAModel(OFAConfig.from_preset(preset, vocab_size=VOCAB))
    if fsdp:
        from ofa.sharding import shard_model

        shard_model(model)
    return model


def train_step(model: OFAModel, batch: dict, device: torch.device) -> Callable[[], None]:
    """Forward (bf16 autocast) + cross-entropy + backward + fused AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(batch["src_tokens"], batch["prev_output_tokens"], batch["patch_images"],
                           batch["patch_masks"])  # (B, T, V)
        F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=PAD).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def run_phase(name: str, model: OFAModel, batch: dict, args: argparse.Namespace, device: torch.device,
              world: int, peak: float | None) -> dict:
    """One phase's numbers (per process; tokens/s and TFLOP/s summed over the ranks)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bsz = batch["src_tokens"].size(0)
    if name == "train":
        fn = train_step(model.train(), batch, device)
        flops = count_flops(fn)  # also the first warm-up call
        times = timed(fn, args.steps, args.warmup, device)
        secs = statistics.median(times)
        out = {"tokens_per_s": bsz * args.tgt_len * world / secs, "tflops_per_s": flops * world / secs / 1e12,
               "flops_per_step": flops}
        out["mfu"] = out["tflops_per_s"] / (peak * world) if peak else None
    else:
        gen = generate_step(model.eval(), batch, 5 if name == "beam5" else 1, args.tgt_len)

        def fn() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                gen()
        times = timed(fn, max(1, args.steps // 3), 1, device)
        secs = statistics.median(times)
        out = {"tokens_per_s": bsz * args.tgt_len * world / secs}
    out |= {"s_per_batch": secs, "min_s_per_batch": min(times), "samples_per_s": bsz * world / secs,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    return out


def bench_model(preset: str, args: argparse.Namespace, device: torch.device, world: int, peak: float | None,
                deadline: float) -> dict:
    batch_size, image = DEFAULTS.get(preset, (8, 256))
    batch_size, image = args.batch or batch_size, args.image_size or image
    model = build_model(preset, device, args.fsdp)
    params = sum(p.numel() for p in model.parameters())  # a DTensor's numel is the whole tensor's
    batch = {k: v.to(device) for k, v in make_batch(batch_size, image, args.src_len, args.tgt_len).items()}
    result = {"params_m": params / 1e6, "batch": batch_size, "image_size": image}
    for name in args.phases:
        if time.monotonic() > deadline:
            result[name] = {"skipped": "budget"}
            continue
        try:
            result[name] = run_phase(name, model, batch, args, device, world, peak)
        except torch.OutOfMemoryError:
            result[name] = {"oom": True}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del model
    return result


def print_table(results: dict, meta: dict) -> None:
    print(f"\n{meta['device']}, torch {meta['torch']}, {meta['world']} process(es){' FSDP2' if meta['fsdp'] else ''}, "
          f"src {meta['src_len']} / tgt {meta['tgt_len']} tokens, peak {meta['peak_tflops'] or '?'} TFLOP/s bf16; "
          f"{meta['wall_s']:.0f} s")
    print("| model | params (M) | batch x px | phase | tokens/s | samples/s | s/batch | TFLOP/s | MFU | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset, r in results.items():
        for name in PHASES:
            p = r.get(name)
            if p is None:
                continue
            if "tokens_per_s" not in p:
                print(f"| {preset} | {r['params_m']:.0f} | {r['batch']} x {r['image_size']} | {name} | "
                      f"{'OOM' if p.get('oom') else 'skipped (budget)'} | | | | | |")
                continue
            tf, mfu, mem = p.get("tflops_per_s"), p.get("mfu"), p.get("peak_mem_gb")
            print(f"| {preset} | {r['params_m']:.0f} | {r['batch']} x {r['image_size']} | {name} | "
                  f"{p['tokens_per_s']:.0f} | {p['samples_per_s']:.1f} | {p['s_per_batch']:.3f} | "
                  f"{'' if tf is None else f'{tf:.3g}'} | {'' if mfu is None else f'{mfu:.1%}'} | "
                  f"{'' if mem is None else f'{mem:.1f}'} |")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULTS))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (ofa.sharding) over the torchrun ranks")
    p.add_argument("--batch", type=int, help="per process (default per model: base 32, large 16, huge 8)")
    p.add_argument("--image-size", type=int, help="default per model: base 384, large and huge 480")
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--tgt-len", type=int, default=20, help="target length; also the number of generated tokens")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (generation: a third of them)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    p.add_argument("--budget-s", type=float, default=420, help="phases starting after this many seconds are skipped")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    start = time.monotonic()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    device, rank, world = (setup_distributed(args.device) if args.fsdp or "WORLD_SIZE" in os.environ
                           else (torch.device(args.device), 0, 1))
    peak = peak_tflops(device, args.peak_tflops)
    results = {m: bench_model(m, args, device, world, peak, start + args.budget_s) for m in args.models}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {"device": name, "torch": torch.__version__,
            "world": world, "fsdp": args.fsdp, "src_len": args.src_len, "tgt_len": args.tgt_len, "peak_tflops": peak,
            "wall_s": time.monotonic() - start, "load": os.getloadavg()}
    if rank == 0:
        print_table(results, meta)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "meta": meta,
                                             "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
