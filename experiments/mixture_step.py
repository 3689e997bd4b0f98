"""Seconds per training step of the default run's mixture with all five tasks in the batch (what its epochs 2-7 run).

    .venv/bin/python experiments/mixture_step.py [--steps 5] [--profile 25] [HYDRA_OVERRIDES ...]
    .venv/bin/python experiments/mixture_step.py model=ofa_nano          # the half-width model

Composes `python train.py`'s config with the overrides (every task from epoch 0), takes `steps + 1` batches of the
training loader, then times forward + loss + backward + gradient clipping + the fused AdamW step of the run's
entry point (its allocator setting included) on them, the first one as a warm-up. `--profile N` adds the N
operators with the most self CPU time over three more steps (`torch.profiler`). Data loading is not timed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OFA_ROOT", str(ROOT))

from ofa import factory  # noqa: E402
from ofa.schemas import register_schemas  # noqa: E402
from ofa.train import keep_freed_memory  # noqa: E402

ALL_TASKS_FROM_EPOCH_0 = [f"data.sources.{t}.start_epoch=0" for t in ("caption", "vqa", "grounding", "snli_ve")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, help="print the N most expensive operators")
    parser.add_argument("--threads", type=int, default=2)
    args, overrides = parser.parse_known_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    register_schemas()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=csv", f"hydra.run.dir={tempfile.mkdtemp()}", "data.num_workers=0",
                                          *ALL_TASKS_FROM_EPOCH_0, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    factory.prepare_data_dir(cfg)
    tokenizer = factory.build_tokenizer_from(cfg.tokenizer)
    tasks = factory.build_tasks(cfg.task, tokenizer)
    dm = factory.build_datamodule(cfg.data, tasks)
    module = factory.build_lit_module(cfg, tasks, tokenizer)
    module.configure_model()
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.steps + 1)]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
    module.train()

    def step(batch: dict) -> None:
        loss = module.training_loss(batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    print(f"model {cfg.hydra.runtime.choices['model']} (d_model {cfg.model.d_model}), batch {cfg.data.batch_size}, "
          f"tasks per batch {[len(set(b['task'])) for b in batches[1:]]}")
    print(f"seconds per step: median {sorted(times)[len(times) // 2]:.3f}  all {[round(t, 3) for t in times]}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches[1:4]:
                step(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
