"""Run several independent commands (e.g. train.py with different overrides) two at a time: each one spends
most of its few seconds importing torch and Lightning on one core, so pairs finish in about half the time."""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PARALLEL = 2  # the CI machine's cores


def run_concurrently(commands: Sequence[Sequence[str]], cwd: Path, env: dict, timeout: float = 300,
                     parallel: int = PARALLEL) -> list[subprocess.CompletedProcess]:
    """`subprocess.run` of every command (output captured as text), `parallel` at a time; results in order."""
    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(run, commands))
