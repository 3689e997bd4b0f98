"""Run train.py (and other Python commands of the project) many times without paying their imports (torch,
Lightning, Hydra: 4-6 s of one core) each time.

One server process imports `ofa.train` once and then forks a child per request. The child is a process of
its own, like `python train.py ...`: its own argv, environment, working directory, stdout/stderr files,
session (so a test can kill its whole group) and exit status; it runs the real root `train.py` as
`__main__`, so everything after the imports — Hydra's command-line parsing, the exit handlers, DDP
launching its further ranks with `subprocess.Popen` — is what a user's command does. The same for `python -m MODULE
...` and `python -c CODE ...` (argv, `sys.path[0]` and `__main__` as the interpreter sets them). The server
has no threads, so forking is safe, and it writes its answers with `os.write` (no Python-level locks are
inherited held).

A DDP run's other ranks: Lightning starts them as `python train.py ...` with `subprocess.Popen`. Each child forks a
spare of itself before running the command (while it has no threads); when the run launches a further rank of its
own script (`LOCAL_RANK` > 0 in the environment it passes), the spare becomes that process, with the command's
argv, environment and working directory, instead of a fresh interpreter paying the imports again. It is a real
child of the run, in its session (a kill of the group reaches it), that `Popen` polls, waits for and signals as
usual; only one per run (a third rank would be a plain process). An unused spare exits when the run does.

Protocol (one JSON object per line): request `{"id", "argv", "env", "cwd", "out", "err"}` on stdin (argv:
the interpreter's arguments, `[script, ...]`, `["-m", module, ...]` or `["-c", code, ...]`); the server
answers `{"id", "pid"}` when the child starts and `{"id", "rc"}` when it ends (rc as subprocess reports it:
negative for a signal).
"""
from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import traceback
import types
import warnings


def run_child(request: dict, ready: int) -> None:
    """In the forked child: become `python train.py ...` and exit with its status."""
    os.setsid()
    os.close(ready)  # tells the server the session exists: its pid is now also its process group's
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    same = request["err"] == request["out"]  # stderr into stdout's file, as `stderr=subprocess.STDOUT`
    err = out if same else os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams, never closed
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    spare = Spare()
    code = run_and_report(list(request["argv"]))
    spare.release()
    os._exit(code)


def run_and_report(argv: list[str]) -> int:
    """Run the command as the interpreter would and return its exit status (printing what it would print)."""
    code = 0
    try:
        run_main(argv)
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
    return code


class Spare:
    """A fork of this child made before its command runs: the next rank of a DDP run, if it launches one.

    While installed, `subprocess.Popen` of `[python, <this script>, ...]` with `LOCAL_RANK` > 0 in its environment
    hands the command to the spare (one JSON line on a pipe) instead of executing a new interpreter; every other
    `Popen` is the real one."""

    def __init__(self) -> None:
        read_end, self.write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the spare: wait for a command (one line), or for the run's end (end of file, or killed)
            os.close(self.write_end)
            with os.fdopen(read_end, "rb") as pipe:
                line = pipe.readline()
            if not line.endswith(b"\n"):
                os._exit(0)
            request = json.loads(line)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os._exit(run_and_report(request["argv"]))
        os.close(read_end)
        self.used = False
        spare = self

        class SparePopen(subprocess.Popen):
            def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest):
                if not spare.takes(args, env, rest[3:9]):
                    return super()._execute_child(args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest)
                spare.hand_over(list(args[1:]), cwd, env)
                self.pid, self._child_created = spare.pid, True
                return None

        self.real_popen, subprocess.Popen = subprocess.Popen, SparePopen

    def takes(self, args, env, pipe_fds) -> bool:
        """Is this `Popen` a further rank of the running script (no pipes, the parent's streams)?"""
        if self.used or isinstance(args, (str, bytes)) or len(args) < 2 or env is None or set(pipe_fds) != {-1}:
            return False
        rank = str(env.get("LOCAL_RANK", "0"))
        return (str(args[0]) == sys.executable and rank.isdigit() and int(rank) > 0
                and os.path.realpath(str(args[1])) == os.path.realpath(sys.argv[0]))

    def hand_over(self, argv: list[str], cwd, env) -> None:
        self.used = True
        message = json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd or os.getcwd()), "env": dict(env)})
        os.write(self.write_end, message.encode() + b"\n")
        os.close(self.write_end)

    def release(self) -> None:
        """At the run's end: an unused spare is ended and reaped (a process the run forked may still hold the pipe
        open, so its end of file is not waited for); a used one is a rank of the run."""
        subprocess.Popen = self.real_popen
        if not self.used:
            os.close(self.write_end)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def run_main(argv: list[str]) -> None:
    """What the interpreter does with its arguments: a script, `-m module` or `-c code` as `__main__`."""
    if argv[0] == "-c":
        sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)  # noqa: S102 - the test's own command
    elif argv[0] == "-m":
        sys.argv, sys.path[0] = ["-m", *argv[2:]], os.getcwd()
        # the server imported the module already (`python -m` would warn only if the package imported it)
        warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                                category=RuntimeWarning)
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv, sys.path[0] = argv, os.path.dirname(os.path.realpath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


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
                wait_end, ready = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(wait_end)
                    run_child(request, ready)
                os.close(ready)
                os.read(wait_end, 1)  # end of file once the child has its session (a kill of its group reaches it)
                os.close(wait_end)
                children[pid] = request["id"]
                answer({"id": request["id"], "pid": pid})
        reap(children)


if __name__ == "__main__":
    serve()
