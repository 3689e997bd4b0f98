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
