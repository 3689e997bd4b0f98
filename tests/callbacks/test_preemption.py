"""`PreemptionCheckpoint` and SLURM requeue. The SIGTERM run itself (signal at a random step, saved step, exit
143, the printed command resumes bitwise exactly) is in tests/test_resume_exact.py, beside the SIGKILL runs."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from lightning_fabric.plugins.environments import SLURMEnvironment

from ofa import factory
from ofa.callbacks.preemption import EXIT_CODE, PreemptionCheckpoint, run_command
from test_configs import compose_cfg


def test_resume_command_is_the_runs_own() -> None:
    assert run_command("train.py", ["task=vqa"]) == ["python", "train.py", "task=vqa"]
    assert run_command("/venv/bin/ofa-train", ["task=vqa"]) == ["ofa-train", "task=vqa"]
    callback = PreemptionCheckpoint("/runs/x/checkpoints", ["python", "train.py", "ckpt_path=/old.ckpt", "seed=3"])
    assert callback.command == ["python", "train.py", "seed=3"]  # its own ckpt_path is replaced
    assert callback.path == Path("/runs/x/checkpoints/last.ckpt")
    assert EXIT_CODE == 128 + signal.SIGTERM == 143


def test_slurm_requeue_checkpoints_are_per_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under SLURM, Lightning requeues on SIGUSR1 and a requeued job restores the newest hpc_ckpt_<n>.ckpt of
    `default_root_dir`: that folder is the job id's, so a new job never resumes another job's checkpoint."""
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "ofa", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "n1",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    cfg = compose_cfg(["logger=none", "callbacks=none", f"paths.root_dir={tmp_path}", "task=caption"], tmp_path)
    trainer = factory.build_trainer(cfg.trainer, False, [])
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1
    assert trainer.default_root_dir == str(tmp_path / "outputs" / "caption_ofa_nano" / "slurm-4242")
    hpc = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
    assert Path(hpc).parent == tmp_path / "outputs" / "caption_ofa_nano" / "slurm-4242"
