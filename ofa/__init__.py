"""OFA (One-For-All) as a PyTorch Lightning + Hydra experiment platform."""

import os

__version__ = "0.1.0"

# PyTorch's own CPU allocation switch, read once at the process's first CPU tensor: blocks of 2 MB and more get
# transparent huge pages (2 MB-aligned, madvise(MADV_HUGEPAGE)), so a big fresh activation, gradient or logits
# tensor is faulted in 512x fewer times. The ofa_tiny training step of the paired bench: ~1.15x, +2% peak memory
# (experiments/README.md, "Fewer page faults"). Set THP_MEM_ALLOC_ENABLE=0 before importing ofa to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def __getattr__(name: str):  # `ofa.from_pretrained` / `ofa.OFA` without importing torch on `import ofa`
    if name in ("from_pretrained", "OFA"):
        import ofa.api

        return getattr(ofa.api, name)
    raise AttributeError(f"module 'ofa' has no attribute {name!r}")
