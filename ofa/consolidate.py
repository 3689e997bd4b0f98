"""`ofa-consolidate CKPT_DIR [-o OUT]`: a sharded checkpoint folder (`trainer=fsdp2`) as one platform `.ckpt`.

The folder holds torch.distributed.checkpoint shards of the weights (`state_dict`) and of each optimizer's state
(`optimizer_<i>`, keyed by parameter name), and Lightning's `meta.pt` (step, loops, callbacks, RNG states, the
`ofa` record). The output is what a single-process run writes: full tensors under `state_dict`, the optimizer
states in torch's own layout (parameters numbered in the order of the param groups, as `Optimizer.state_dict()`
numbers them) under `optimizer_states`, and the rest of `meta.pt`; written atomically. So it loads like any other
`.ckpt`: `init_from=`, `ckpt_path=` on any trainer (resume), `ofa-convert-checkpoint`, `stage=test`. The whole
model and optimizer state must fit in this machine's memory (and once on its disk, as a temporary file).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ofa.checkpoint_io import atomic_torch_save
from ofa.errors import RunConfigError
from ofa.safe_load import safe_torch_load
from ofa.sharding import META_FILE, is_sharded_checkpoint


def torch_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """Name-keyed optimizer state (`get_optimizer_state_dict`) -> torch's id-keyed layout."""
    ids: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        params = [ids.setdefault(name, len(ids)) for name in group["params"]]
        groups.append({**group, "params": params})
    return {"state": {ids[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def read_sharded(folder: Path) -> dict[str, Any]:
    """The whole checkpoint in memory, laid out as Lightning's single-file `.ckpt`."""
    if not is_sharded_checkpoint(folder):
        raise RunConfigError(f"{folder}: not a sharded checkpoint folder (no {META_FILE}; trainer=fsdp2 writes "
                             "checkpoints/last.ckpt/ and best.ckpt/ as such folders)")
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        shards = safe_torch_load(Path(tmp) / "full.pt")
    checkpoint = safe_torch_load(folder / META_FILE)
    optimizers = sorted((k for k in shards if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    checkpoint["state_dict"] = shards["state_dict"] if "state_dict" in shards else shards["model"]  # FSDP1: model
    checkpoint["optimizer_states"] = [torch_optimizer_state(shards[k]) for k in optimizers]
    return checkpoint


def consolidate(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write `out` (default: `<folder>-full.ckpt` beside it); an existing file is never overwritten."""
    folder = Path(folder)
    target = Path(out) if out else folder.with_name(f"{folder.stem}-full.ckpt")
    if target.exists():
        raise RunConfigError(f"{target} exists; give another output path (-o)")
    atomic_torch_save(read_sharded(folder), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-consolidate", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a sharded checkpoint folder, e.g. outputs/<run>/<time>/checkpoints/last.ckpt")
    parser.add_argument("-o", "--output", help="the .ckpt file to write (default: <folder>-full.ckpt beside it)")
    args = parser.parse_args(argv)
    try:
        path = consolidate(args.folder, args.output)
    except RunConfigError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
