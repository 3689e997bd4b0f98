"""Code shards of the synthetic world, made on first use with the run's VQGAN (`task.vqgan`).

- `image_gen`: `<synthetic_dir>/image_gen/codes/`, the text-to-image world's shards with `codes` at
  `task.code_image_size`;
- `image_infill`: `<synthetic_dir>/image_infill/`, the main world's shards with `center_codes` at
  `task.image_size`.
Each folder records the VQGAN (path, size and mtime of its checkpoint) and the sizes in its summary.json and
is remade when they change, e.g. after a new tokenizer was trained into the same folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ofa.datamodules.add_codes import add_codes
from ofa.datamodules.generated_dir import ensure_generated
from ofa.errors import RunConfigError

CODE_TASKS = {"image_gen": ("image_gen", "image_gen/codes"), "image_infill": (".", "image_infill")}


def vqgan_stamp(path: str) -> dict[str, Any]:
    """What identifies a VQGAN checkpoint: its resolved path, size and mtime."""
    ckpt = Path(path).expanduser().resolve() / "last.ckpt"
    if not ckpt.is_file():
        hint = ("; make the synthetic world's tokenizer there with `python train_vq.py` (about 5 minutes on 2 cores)"
                if Path(path).name == "vq_nano" else "")
        raise RunConfigError(f"task.vqgan={path}: no last.ckpt there; point task.vqgan at a VQGAN dir "
                             f"(model.yaml + last.ckpt: OFA's vqgan/ folder or a taming-transformers run){hint}")
    stat = ckpt.stat()
    return {"vqgan": str(ckpt.parent), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def ensure_code_shards(synthetic_dir: str, task: str, task_cfg: Any) -> Path | None:
    """Make (or reuse) the code shards of `task` in the synthetic world; None for other tasks."""
    if task not in CODE_TASKS or not task_cfg.get("vqgan"):
        return None
    source, target = (Path(synthetic_dir).expanduser().resolve() / p for p in CODE_TASKS[task])
    size = int(task_cfg["code_image_size"]) if task == "image_gen" else 0
    center = int(task_cfg["image_size"]) if task == "image_infill" else 0
    config = {**vqgan_stamp(str(task_cfg["vqgan"])), "size": size, "center": center, "source": str(source)}

    def generate(tmp: Path) -> None:
        from ofa.vqgan_io import load_vqgan

        vqgan = load_vqgan(config["vqgan"]).eval()
        args = argparse.Namespace(size=size, center=center, sample=False, seed=0, batch_size=64, overwrite=True)
        counts = add_codes([str(p) for p in sorted(source.glob("*.tar"))], tmp, vqgan, args)
        (tmp / "summary.json").write_text(json.dumps({"config": config, "counts": dict(counts)}, indent=1) + "\n",
                                          encoding="utf-8")

    return ensure_generated(target, config, generate)
