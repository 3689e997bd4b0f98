"""The platform's CPU speed defaults (issue 12): the fused AdamW kernel and glibc keeping freed memory."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from ofa.train import wants_malloc_keep
from ofa.utils.optim import OptimConfig, build_optimizer, param_groups
from subprocess_runs import ROOT, run_command


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def test_cpu_default_is_the_fused_adamw_with_the_same_groups():
    model = small_model()
    cfg = OptimConfig(lr=1e-3, lr_scale={"3": 0.5})
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True  # would fail if the speed path were silently off
    plain = param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_scale)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == \
        [(g["lr"], g["weight_decay"], len(g["params"])) for g in plain]


@pytest.mark.parametrize("fused, expected", [(False, None), (True, True)])
def test_fused_can_be_forced(fused, expected):
    assert build_optimizer(small_model(), OptimConfig(fused=fused)).defaults["fused"] is expected


def test_fused_steps_equal_the_per_tensor_loop():
    """Three steps with decay, two lr groups: the same parameters as PyTorch's single-tensor AdamW (float32)."""
    models = [small_model(), small_model()]
    opts = [build_optimizer(models[0], OptimConfig(lr=1e-2, lr_scale={"3": 0.5})),
            build_optimizer(models[1], OptimConfig(lr=1e-2, lr_scale={"3": 0.5}, fused=False))]
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for _ in range(3):
        for model, opt in zip(models, opts):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_malloc_keep_for_cpu_runs_with_an_opt_out(monkeypatch):
    monkeypatch.delenv("OFA_MALLOC", raising=False)
    assert wants_malloc_keep("cpu") and not wants_malloc_keep("gpu")
    assert wants_malloc_keep("auto") == (not torch.cuda.is_available())
    monkeypatch.setenv("OFA_MALLOC", "default")
    assert not wants_malloc_keep("cpu")


FAULTS = """
import resource, sys, torch
from ofa.train import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
counts = []
for _ in range(32):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(10 << 20).fill_(1)  # 40 MB, above glibc's 32 MiB mmap threshold
    del t
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts[-8:]))  # the last 8 allocations
"""


def page_faults(mode: str) -> int:
    out = run_command([sys.executable, "-c", FAULTS, mode], ROOT, dict(os.environ))  # a fresh process's heap
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_big_blocks_returning_to_the_kernel():
    """Fresh processes allocating and freeing a 40 MB tensor 32 times: glibc's default maps it afresh every time
    (~10k page faults each, or at least one per 2 MB huge page: ofa turns those on); with the setting the heap
    keeps the pages, so once the first allocations have grown the heap (4-8 of them, measured) they are reused.
    The first version passed 2**36 as the trim threshold, which a C int wraps to 0 (trim on every free): then
    even the last allocations faulted, now and then."""
    keep, default = page_faults("keep"), page_faults("default")
    assert default >= 8 * 20 and keep * 10 < default, (keep, default)


def test_importing_ofa_turns_on_huge_pages_for_big_cpu_tensors_unless_the_environment_says(monkeypatch):
    import importlib

    import ofa

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    importlib.reload(ofa)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the user's choice wins
    importlib.reload(ofa)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


PAGE_ALIGNED = """
import os, sys
os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
import torch
import ofa.modules.config  # before the first CPU tensor, as in the paired bench's side script
print(torch.empty(8 << 20).data_ptr() % 4096)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_a_process_that_imports_ofa_allocates_big_cpu_tensors_on_pytorchs_huge_page_path():
    """PyTorch's THP path aligns blocks of 2 MB and more to the page and madvise(MADV_HUGEPAGE)s them (64-byte
    alignment otherwise): the signature that importing ofa switched it on in a fresh process. Whether the kernel
    then finds free huge pages depends on the machine (the page-fault counts in experiments/README.md, "Fewer page
    faults"), so it is not asserted here."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", PAGE_ALIGNED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0", out.stdout  # without the switch: 64 bytes past a page boundary
