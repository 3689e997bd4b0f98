"""A run SIGTERMed at a random step saves `last.ckpt` at the step it reached, prints one line with the command to
resume and exits with 143; that command continues it with bitwise the same per-step losses as an uninterrupted run.
A run SIGKILLed mid-epoch and resumed with `ckpt_path=last` logs bitwise the same per-step training losses
as an uninterrupted run of the same seed (model, optimizer, scheduler, RNG states and the position in the
training stream all restored; dropout on, so the RNG states matter). Also as a 2-process CPU DDP run
(`trainer=ddp_sim`, gloo): the whole process group is killed, and each rank must get back its own RNG states
and stream position (rank 0's loss is logged; rank 1's batches reach it through the averaged gradients, and the
final weights are compared too)."""
from __future__ import annotations

import csv
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from subprocess_runs import kill_group, run_command, start_train_until, train_server
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.1)
STEPS_PER_EPOCH, EPOCHS = 6, 2
MID_EPOCH = (4, 9)  # (checkpoint every, kill after step): resumes from step 8, mid-epoch 1
EPOCH_END = (3, 7)  # resumes from step 6, the end of epoch 0


def overrides(data_dir: Path, run_dir: Path, num_workers: int, every: int, trainer: str = "cpu") -> list[str]:
    return [f"hydra.run.dir={run_dir}", f"trainer={trainer}", "task=caption", "data.synthetic_dir=null",
            f"data.train_shards={data_dir}/train-*.tar",
            f"data.val_shards={data_dir}/val-*.tar", f"data.test_shards={data_dir}/test-*.tar",
            f"tokenizer.path={data_dir}/tokenizer.json", *[f"model.{k}={v}" for k, v in TINY.items()],
            "task.image_size=32", "data.batch_size=4", "data.shuffle_buffer=8",
            f"data.num_workers={num_workers}", f"data.batches_per_epoch={STEPS_PER_EPOCH}",
            f"trainer.max_epochs={EPOCHS}", "trainer.limit_val_batches=0", "trainer.deterministic=true",
            "trainer.log_every_n_steps=1", "test_after_fit=false", "logger=csv", "logger.flush_logs_every_n_steps=1",
            f"callbacks.step_checkpoint.every_n_train_steps={every}", "callbacks.progress_bar.refresh_rate=100"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict:
    """Runs overlap: one thread each (no spinning OpenMP threads), and each DDP run its own rendezvous port."""
    out = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    out.pop("HYDRA_FULL_ERROR", None)
    return out


def train(args: list[str]) -> subprocess.CompletedProcess:
    proc = run_command([sys.executable, str(ROOT / "train.py"), *args], ROOT, env(), 600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, str]:
    """step -> train/loss as logged (the CSV holds the float's full repr, so string equality is bitwise)."""
    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    out[int(row["step"])] = row["train/loss"]
    return out


def rank_counts(output: str) -> dict[int, tuple[int, int]]:
    """rank -> (train batches, optimizer steps) from each rank's `[rank r/w] ...` summary line."""
    found = re.findall(r"\[rank (\d+)/\d+\] train batches: (\d+), optimizer steps: (\d+)", output)
    return {int(r): (int(b), int(s)) for r, b, s in found}


def train_and_kill(args: list[str], run_dir: Path, after_step: int) -> None:
    """Start train.py and SIGKILL its whole process group (all DDP ranks) as soon as its log shows `after_step`."""
    proc = start_train_until(args, env(), lambda: max(losses(run_dir), default=-1), after_step)
    kill_group(proc)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


class Reference:
    """An uninterrupted run, started in the background and shared by the tests that need the same one (the
    losses do not depend on the checkpoint interval, so one run serves every kill plan)."""

    def __init__(self, args: list[str], run_dir: Path) -> None:
        self.run_dir, self.log = run_dir, run_dir.parent / "output.txt"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proc = train_server().start([str(ROOT / "train.py"), *args], ROOT, env(), out=str(self.log),
                                         err=str(self.log))

    def result(self) -> tuple[dict[int, str], str]:
        """(step -> loss, the run's output) once it has finished."""
        self.proc.wait(timeout=600)
        output = self.log.read_text()
        assert self.proc.returncode == 0, output[-4000:]
        return losses(self.run_dir), output


@pytest.fixture(scope="module")
def reference_run(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(trainer, num_workers) -> its `Reference`, started on first request."""
    started: dict[tuple[str, int], Reference] = {}

    def get(trainer: str, num_workers: int) -> Reference:
        if (trainer, num_workers) not in started:
            run_dir = tmp_path_factory.mktemp(f"full-{trainer}-{num_workers}") / "run"
            args = overrides(synthetic_data_dir, run_dir, num_workers, MID_EPOCH[0], trainer)
            started[(trainer, num_workers)] = Reference(args, run_dir)
        return started[(trainer, num_workers)]

    return get


def check_exact_resume(data_dir: Path, tmp_path: Path, reference: Reference, num_workers: int,
                       plan: tuple[int, int], trainer: str = "cpu") -> None:
    every, kill_after = plan
    steps, ranks = STEPS_PER_EPOCH * EPOCHS, 2 if trainer == "ddp_sim" else 1
    first, second = tmp_path / "killed" / "first", tmp_path / "killed" / "second"
    train_and_kill(overrides(data_dir, first, num_workers, every, trainer), first, kill_after)  # beside the reference
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved_step = ckpt["global_step"]
    assert saved_step == kill_after // every * every, saved_step
    assert not list((first / "checkpoints").glob(".*.tmp")), "a temp checkpoint was left behind"

    reference_losses, output = reference.result()
    assert sorted(reference_losses) == list(range(steps))
    assert rank_counts(output) == {r: (steps, steps) for r in range(ranks)}

    proc = train(overrides(data_dir, second, num_workers, every, trainer) + ["ckpt_path=last"])  # first's last.ckpt
    resumed = losses(second)
    assert sorted(resumed) == list(range(saved_step, steps)), proc.stdout[-2000:]
    assert {s: reference_losses[s] for s in resumed} == resumed  # bitwise: no sample skipped or repeated
    assert rank_counts(proc.stdout + proc.stderr) == {r: (steps, steps) for r in range(ranks)}
    weights = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for run in (reference.run_dir, second)]  # the last step (every rank's batch) included
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    killed = losses(first)  # the steps logged before the kill match too
    assert {s: reference_losses[s] for s in killed} == killed


def test_sigkill_mid_epoch_and_resume_is_bitwise_exact(synthetic_data_dir: Path, tmp_path: Path,
                                                       reference_run) -> None:
    check_exact_resume(synthetic_data_dir, tmp_path, reference_run("cpu", 0), num_workers=0, plan=MID_EPOCH)


@pytest.mark.slow
@pytest.mark.parametrize("trainer, num_workers, plan", [
    ("cpu", 1, MID_EPOCH), ("cpu", 0, EPOCH_END), ("cpu", 1, EPOCH_END),
    pytest.param("ddp_sim", 0, MID_EPOCH, id="ddp_sim-0-mid_epoch")])  # 2 processes, gloo; the group is killed
def test_sigkill_and_resume_is_bitwise_exact_variants(synthetic_data_dir: Path, tmp_path: Path, reference_run,
                                                      trainer: str, num_workers: int, plan: tuple[int, int]) -> None:
    check_exact_resume(synthetic_data_dir, tmp_path, reference_run(trainer, num_workers), num_workers=num_workers,
                       plan=plan, trainer=trainer)


def train_until_sigterm(args: list[str], run_dir: Path, after_step: int) -> subprocess.CompletedProcess:
    """Start train.py, SIGTERM it as soon as its log shows `after_step`, and let it end on its own."""
    out, err = run_dir.parent / "stdout.txt", run_dir.parent / "stderr.txt"
    proc = start_train_until(args, env(), lambda: max(losses(run_dir), default=-1), after_step, str(out), str(err))
    try:
        os.kill(proc.pid, signal.SIGTERM)  # the run's process only, as a scheduler's preemption notice
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def check_sigterm_resume(proc: subprocess.CompletedProcess, first: Path, second: Path, reference: Reference,
                         note: str) -> int:
    """The SIGTERMed run `proc` (run dir `first`) exited with 143 after saving last.ckpt at the step in flight and
    printing one line with the command to resume; that command (run dir `second`) logs bitwise the reference's
    losses for the remaining steps. Returns the saved step."""
    steps = STEPS_PER_EPOCH * EPOCHS
    assert proc.returncode == 143, (note, proc.stderr[-3000:])
    ckpt = first / "checkpoints" / "last.ckpt"
    saved_step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    killed = losses(first)
    assert saved_step == max(killed) + 1, (note, saved_step, sorted(killed))  # the step in flight ended
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("preempted")]
    assert len(lines) == 1, proc.stderr[-3000:]
    head, command = lines[0].split("; resume with: ")
    assert head == f"preempted (SIGTERM) at step {saved_step}: saved {ckpt.resolve()}"
    words = shlex.split(command)
    assert words[:2] == ["python", str(ROOT / "train.py")] and words[-1] == f"ckpt_path={ckpt.resolve()}"
    assert not list((first / "checkpoints").glob(".*.tmp")), "a temp checkpoint was left behind"

    resumed_proc = run_command([sys.executable, *words[1:], f"hydra.run.dir={second}"], ROOT, env(), 600)
    # ^ the printed command (its python: this one), in a run dir of the test's
    assert resumed_proc.returncode == 0, resumed_proc.stderr[-3000:]
    reference_losses, _ = reference.result()
    resumed = losses(second)
    assert sorted(resumed) == list(range(saved_step, steps)), (note, sorted(resumed))
    assert {s: reference_losses[s] for s in resumed} == resumed, note  # bitwise
    assert {s: reference_losses[s] for s in killed} == killed, note
    print(f"{note}: saved step {saved_step}, exit status {proc.returncode}, resumed steps {saved_step}..{steps - 1} "
          "equal to the uninterrupted run")
    return saved_step


@pytest.mark.slow  # two train.py runs (+ the shared reference): ~20 s
def test_sigterm_saves_the_current_step_and_resume_is_bitwise_exact(synthetic_data_dir: Path, tmp_path: Path,
                                                                   reference_run) -> None:
    reference = reference_run("cpu", 0)  # started now, beside the interrupted run
    signal_after = random.randrange(STEPS_PER_EPOCH * EPOCHS - 3)  # leaves steps to interrupt
    first, second = tmp_path / "first", tmp_path / "second"
    every = 100  # no step checkpoint: last.ckpt can only come from the SIGTERM
    proc = train_until_sigterm(overrides(synthetic_data_dir, first, 0, every), first, signal_after)
    saved_step = check_sigterm_resume(proc, first, second, reference, f"SIGTERM after step {signal_after}")
    assert saved_step > signal_after


@pytest.mark.parametrize("hook, step", [
    ("batch_end", STEPS_PER_EPOCH),  # the epoch's last batch, after the end-of-batch check: seen at the epoch's end
    pytest.param("batch_end", 3, marks=pytest.mark.slow),  # mid-epoch, after the end-of-batch check
    pytest.param("epoch_end", STEPS_PER_EPOCH, marks=pytest.mark.slow)])  # during on_train_epoch_end
def test_sigterm_at_an_exact_point_resumes_bitwise_exactly(synthetic_data_dir: Path, tmp_path: Path, reference_run,
                                                           hook: str, step: int) -> None:
    """The signal's timing made exact (tests/sigterm_at.py): a signal that misses the end-of-batch save of an epoch's
    last batch is saved after Lightning counted the epoch completed, and that resume once skipped the next epoch's
    batches (the data stream's position read the new epoch with the old epoch's batch count)."""
    reference = reference_run("cpu", 0)
    first, second = tmp_path / "first", tmp_path / "second"
    args = [sys.executable, str(ROOT / "tests" / "sigterm_at.py"), hook, str(step),
            *overrides(synthetic_data_dir, first, 0, 100)]
    proc = run_command(args, ROOT, env(), 600)
    saved_step = check_sigterm_resume(proc, first, second, reference, f"SIGTERM in {hook} at step {step}")
    assert saved_step == step
