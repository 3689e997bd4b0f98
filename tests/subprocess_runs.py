"""Run the tests' real commands (`python train.py ...`, `python -m ofa...`) cheaply (docs/TESTING.md).

- `run_command(cmd, cwd, env)`: like `subprocess.run(..., capture_output=True, text=True)`. A command of
  this python (`<python> SCRIPT ...`, `<python> -m module ...`, `<python> -c code ...`) is started by the
  train server (tests/train_server.py): a process of its own, forked from one that already imported torch
  and Lightning, so it skips 4-6 s of imports. Anything else is a plain subprocess; so is a test that needs
  a fresh interpreter (what an import pulls in), with `subprocess.run` itself.
- `shell_words(typed)`: the words bash makes of a command line as a user types it (quotes, brace
  expansion), for running a documented command through `run_command`.
- `run_concurrently(commands, cwd, env)`: several independent commands two at a time (the machine's cores).
- `start_train_until(args, env, logged_step, after_step)`: a served train.py run, returned once its log reached a
  step (then kill it with `kill_group`, or signal its pid).
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
SERVER = Path(__file__).resolve().parent / "train_server.py"
PARALLEL = 2  # the CI machine's cores


class TrainServer:
    """Client of one train server process (started when a test module imports this one, ended with the test
    session)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if '"ready"' not in ready:
            raise RuntimeError(f"train server did not start: {ready!r}")
        self.ids = itertools.count()
        self.events: dict[str, dict] = {}
        self.changed = threading.Condition()
        self.send_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        atexit.register(self.close)

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            with self.changed:
                self.events.setdefault(message["id"], {}).update(message)
                self.changed.notify_all()

    def _wait_for(self, run_id: str, key: str, timeout: float | None) -> dict:
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.events.get(run_id, {}), timeout=timeout):
                return {}
            return self.events[run_id]

    def start(self, argv: Sequence[str], cwd: Path, env: dict, out: str = os.devnull,
              err: str = os.devnull) -> ServedProcess:
        """Start a run (stdout and stderr written to the files `out`, `err`; the same path: one stream, as
        `stderr=subprocess.STDOUT`) and return once it has its pid."""
        run_id = str(next(self.ids))
        request = {"id": run_id, "argv": list(argv), "env": dict(env), "cwd": str(cwd), "out": out, "err": err}
        with self.send_lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        return ServedProcess(self, run_id, self._wait_for(run_id, "pid", 60)["pid"], [sys.executable, *argv])

    def run(self, argv: Sequence[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            proc = self.start(argv, cwd, env, out, err)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                raise
            stdout, stderr = Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace")
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class ServedProcess:
    """A run of the train server as `subprocess.Popen` offers one: `pid` (also its process group's), `args`,
    `returncode`, `poll()`, `wait(timeout)`."""

    def __init__(self, server: TrainServer, run_id: str, pid: int, args: list[str]) -> None:
        self.server, self.run_id, self.pid, self.args = server, run_id, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and (done := self.server._wait_for(self.run_id, "rc", 0)):
            self.returncode = done["rc"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        done = self.server._wait_for(self.run_id, "rc", timeout)
        if not done:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = done["rc"]
        return self.returncode


_server: TrainServer | None = None
_server_lock = threading.Lock()


def train_server() -> TrainServer:
    global _server
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = TrainServer()
        return _server


# Started as soon as a test module imports this one (at collection): the server's imports use the second core
# while the first tests run, instead of delaying the first test that runs a command.
threading.Thread(target=train_server, daemon=True).start()


def run_command(cmd: Sequence[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run` semantics (output captured as text); commands of this python go through the train
    server."""
    cmd = [str(c) for c in cmd]
    if len(cmd) >= 2 and cmd[0] == sys.executable and (cmd[1] in ("-c", "-m") or Path(cwd, cmd[1]).is_file()):
        return train_server().run(cmd[1:], cwd, env, timeout)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def shell_words(typed: str) -> list[str]:
    """The argv bash makes of `typed` (a command line as a user types it: quoting, brace expansion)."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {typed}"], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def run_concurrently(commands: Sequence[Sequence[str]], cwd: Path, env: dict, timeout: float = 300,
                     parallel: int = PARALLEL) -> list[subprocess.CompletedProcess]:
    """`run_command` of every command, `parallel` at a time; results in order."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda cmd: run_command(cmd, cwd, env, timeout), commands))


def kill_group(proc: subprocess.Popen | ServedProcess) -> None:
    """SIGKILL the process group of a run started with `start_new_session` (all its DDP ranks)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def start_train_until(args: Sequence[str], env: dict, logged_step: Callable[[], int], after_step: int,
                      out: str = os.devnull, err: str = os.devnull) -> ServedProcess:
    """Start `python train.py ARGS` (served, in a session of its own; stdout and stderr into the files `out` and
    `err`) and return it once `logged_step()` (the newest step in its log) reaches `after_step`; a run that ends
    first or takes over 10 minutes is killed and fails."""
    proc = train_server().start([TRAIN, *args], ROOT, env, out, err)
    deadline = time.monotonic() + 600
    try:
        while logged_step() < after_step:
            assert proc.poll() is None, f"run ended (rc {proc.returncode}) before step {after_step}"
            assert time.monotonic() < deadline, f"timed out waiting for the run to reach step {after_step}"
            time.sleep(0.02)
    except BaseException:  # also on a failed wait: nothing is left running
        kill_group(proc)
        raise
    return proc
