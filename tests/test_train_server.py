"""The train server (tests/train_server.py) behaves like `python train.py ...`: same exit status, same output
lines, its own working directory and environment, a process group of its own."""
from __future__ import annotations

import os
import subprocess
import sys

from subprocess_runs import ROOT, TRAIN, run_command, train_server


def test_a_served_run_matches_a_plain_process(tmp_path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, TRAIN, "model.d_modl=3"]
    served = run_command(cmd, ROOT, env)
    plain = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert served.returncode == plain.returncode == 2
    assert served.stderr.strip().splitlines() == plain.stderr.strip().splitlines()


def test_a_served_run_gets_its_own_cwd_env_session_and_status(tmp_path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import os, sys; print(os.getcwd(), os.environ.get('PROBE'), os.environ.get('OTHER'), "
                      "os.getsid(0) == os.getpid(), sys.argv[1:]); sys.exit(7)")
    env = {k: v for k, v in os.environ.items() if k != "OTHER"}
    os.environ["OTHER"] = "server-side"  # the child sees the request's environment only
    try:
        proc = train_server().run([str(script), "a", "b"], tmp_path, {**env, "PROBE": "x"}, timeout=60)
    finally:
        del os.environ["OTHER"]
    assert proc.returncode == 7
    assert proc.stdout.strip().split(None, 4) == [str(tmp_path), "x", "None", "True", "['a', 'b']"]


def test_served_dash_c_and_dash_m_set_argv_path_and_main_as_the_interpreter(tmp_path) -> None:
    (tmp_path / "probe_mod.py").write_text("import sys; print(__name__, sys.argv, sys.path[0])")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    code = run_command([sys.executable, "-c", "import sys; print(__name__, sys.argv, repr(sys.path[0]))", "a"],
                       tmp_path, env)
    module = run_command([sys.executable, "-m", "probe_mod", "b"], tmp_path, env)
    assert (code.returncode, code.stdout.strip()) == (0, "__main__ ['-c', 'a'] ''")
    assert (module.returncode, module.stderr) == (0, "")
    assert module.stdout.strip() == f"__main__ {[str(tmp_path / 'probe_mod.py'), 'b']} {tmp_path}"
    checkpoint = run_command([sys.executable, "-m", "ofa.checkpoint", "--help"], tmp_path, env)  # imported already
    assert checkpoint.returncode == 0 and checkpoint.stderr == "" and "convert" in checkpoint.stdout


def test_a_started_run_is_polled_waited_for_and_killed_with_its_group(tmp_path) -> None:
    import signal

    from subprocess_runs import kill_group

    proc = train_server().start(["-c", "import time; time.sleep(60)"], tmp_path, dict(os.environ))
    assert proc.poll() is None and os.getpgid(proc.pid) == proc.pid
    kill_group(proc)
    assert proc.wait(timeout=30) == -signal.SIGKILL and proc.poll() == proc.returncode == -signal.SIGKILL


def test_stdout_and_stderr_into_one_file_interleave_as_written(tmp_path) -> None:
    log = str(tmp_path / "log")
    code = "import sys; print('out 1', flush=True); print('err', file=sys.stderr, flush=True); print('out 2')"
    assert train_server().start(["-c", code], tmp_path, dict(os.environ), out=log, err=log).wait(60) == 0
    assert (tmp_path / "log").read_text() == "out 1\nerr\nout 2\n"


def test_a_further_rank_of_the_served_script_is_its_spare_and_anything_else_a_plain_process(tmp_path) -> None:
    """What Lightning's DDP launcher does (`Popen([python, script, ...], env={..., LOCAL_RANK: 1}, cwd=...)`) gets the
    run's spare: a child in the run's group that already has torch imported, with the command's argv, environment
    and working directory, that `Popen` waits for; the same command without a rank is a fresh interpreter."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "if sys.argv[1] == 'x':  # a launched process\n"
        "    print(os.environ.get('LOCAL_RANK'), 'torch' in sys.modules, os.getpgid(0) == int(os.environ['PGID']),\n"
        "          os.getcwd(), sys.argv[1:], flush=True)\n"
        "    sys.exit(int(os.environ.get('LOCAL_RANK', 0)) + 4)\n"
        "env = {**os.environ, 'PGID': str(os.getpgid(0))}\n"
        "for extra in ({'LOCAL_RANK': '1'}, {'LOCAL_RANK': '2'}, {}):  # the spare, then plain processes\n"
        "    child = subprocess.Popen([sys.executable, sys.argv[0], 'x'], env={**env, **extra}, cwd=sys.argv[1])\n"
        "    print('status', child.wait(), flush=True)\n")
    (tmp_path / "elsewhere").mkdir()
    proc = train_server().run([str(script), str(tmp_path / "elsewhere")], tmp_path, dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == [f"1 True True {tmp_path / 'elsewhere'} ['x']", "status 5",
                     f"2 False True {tmp_path / 'elsewhere'} ['x']", "status 6",
                     f"None False True {tmp_path / 'elsewhere'} ['x']", "status 4"]
