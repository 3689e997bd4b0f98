"""Run train.py many times without paying its imports (torch, Lightning, Hydra: ~4 s of one core) each time.

One server process imports `ofa.train` once and then forks a child per request. The child is a process of
its own, like `python train.py ...`: its own argv, environment, working directory, stdout/stderr files,
session (so a test can kill its whole group) and exit status; it runs the real root `train.py` as
`__main__`, so everything after the imports — Hydra's command-line parsing, the exit handlers, DDP
launching further real processes — is exactly what a user's command does. The server has no threads, so
forking is safe, and it writes its answers with `os.write` (no Python-level locks are inherited held).

Protocol (one JSON object per line): request `{"id", "argv", "env", "cwd", "out", "err"}` on stdin; the
server answers `{"id", "pid"}` when the child starts and `{"id", "rc"}` when it ends (rc as subprocess
reports it: negative for a signal).
"""
from __future__ import annotations

import json
import os
import runpy
import select
import sys
import traceback


def run_child(request: dict) -> None:
    """In the forked child: become `python train.py ...` and exit with its status."""
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams, never closed
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = list(request["argv"])
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:  # sys.exit("message"): printed, status 1, as the interpreter does
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - an uncaught error: traceback and status 1, as the interpreter does
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def answer(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def reap(children: dict[int, str]) -> None:
    """Report every finished child (non-blocking)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        answer({"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


def serve() -> None:
    import ofa.train  # noqa: F401 - the expensive imports, once, before any fork

    children: dict[int, str] = {}
    buffer = b""
    answer({"ready": True})
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        if readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the test session ended
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    run_child(request)
                children[pid] = request["id"]
                answer({"id": request["id"], "pid": pid})
        reap(children)


if __name__ == "__main__":
    serve()
