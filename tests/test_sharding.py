"""FSDP2 (`trainer=fsdp2`, `ofa.sharding`) and `ofa-consolidate`.

In-process (one rank, gloo): the sharded model computes what the unsharded one does, generation included, and
a checkpoint folder swaps in atomically. As real `train.py` runs of 2 CPU processes (slow): the per-step losses
equal a replicated 2-process DDP run's within float tolerance (that run's two ranks train on equal batch counts,
then validate and test together); a run SIGKILLed after its sharded checkpoint and
resumed with `ckpt_path=last` logs bitwise the uninterrupted run's losses, and so does the same checkpoint
consolidated into one file; the consolidated `.ckpt` is laid out like the DDP run's (same keys, same optimizer
layout) and a 1-process run continues from it."""
from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ofa.consolidate import consolidate, main as consolidate_main
from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.modules.model import OFAModel
from ofa.sharding import dtype_of, shard_model, swap_in
from subprocess_runs import kill_group, run_command, start_train_until
from test_train import rank_counts

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.1)
STEPS_PER_EPOCH, EPOCHS, EVERY, KILL_AFTER = 3, 2, 2, 3  # 6 steps; killed after step 3, resumed from step 2
EVALUATE = [f"trainer.check_val_every_n_epoch={EPOCHS}", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "test_after_fit=true", "data.eval_batch_size=4", "task.generation.beam_size=2",
            "task.generation.max_len_b=4", "task.ptb_tokenizer=false"]  # after the last step: the losses stay


@pytest.fixture
def one_rank_group(tmp_path: Path):
    """A 1-process gloo group (what `fully_shard` needs), destroyed after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_model() -> OFAModel:
    torch.manual_seed(0)
    return OFAModel(OFAConfig(**{k: v for k, v in TINY.items() if k != "dropout"}, vocab_size=64,
                              image_bucket_size=4)).eval()


def test_sharded_model_computes_what_the_unsharded_one_does(one_rank_group: None) -> None:
    full = tiny_model()
    sharded = shard_model(copy.deepcopy(full))
    src, prev = torch.randint(4, 64, (2, 7)), torch.randint(4, 64, (2, 5))
    images = torch.randn(2, 3, 32, 32)
    masks = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(sharded(src, prev, images, masks), full(src, prev, images, masks))
    gen = GenerationConfig(beam_size=2, max_len_b=4)
    hyps = [[h.tokens.tolist() for h in sample] for m in (full, sharded)
            for sample in SequenceGenerator(m, gen).generate(src, images, masks)]  # encode/decode: FSDP forwards
    assert hyps[:2] == hyps[2:]
    sharded(src, prev, images, masks).float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in sharded.parameters() if p.grad is not None]
    assert grads and all(type(g).__name__ == "DTensor" for g in grads)


def test_bf16_sharded_model_trains_and_generates(one_rank_group: None) -> None:
    """FSDP2 mixed precision (`param_dtype`): the ResNet computes in float32 (its BatchNorm statistics), the rest in
    bfloat16; beam search's cache is updated in place (FSDP2 does not copy the inputs)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    full = tiny_model()
    sharded = shard_model(copy.deepcopy(full), mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
    src, prev, images = torch.randint(4, 64, (2, 7)), torch.randint(4, 64, (2, 5)), torch.randn(2, 3, 32, 32)
    masks = torch.ones(2, dtype=torch.bool)
    logits = sharded.train()(src, prev, images, masks)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), full.train()(src, prev, images, masks), atol=0.1, rtol=0.05)
    logits.float().logsumexp(-1).mean().backward()
    hyps = SequenceGenerator(sharded.eval(), GenerationConfig(beam_size=2, max_len_b=4, min_len=4)).generate(
        src, images, masks)
    assert {len(h.tokens) for sample in hyps for h in sample} == {5}  # 4 tokens + </s>


def test_swap_in_replaces_the_folder_by_one_rename(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    for step in (1, 2):
        staged = tmp_path / f".last.ckpt.{step}"
        staged.mkdir()
        (staged / "meta.pt").write_text(str(step))
        swap_in(staged, target)
        assert target.is_symlink() and (target / "meta.pt").read_text() == str(step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.2", "last.ckpt"]  # the old folder is gone


def test_dtype_names() -> None:
    assert dtype_of("bfloat16") is torch.bfloat16 and dtype_of(None) is None
    with pytest.raises(ValueError, match="unknown dtype 'bf17'"):
        dtype_of("bf17")


def test_consolidate_refuses_what_is_not_a_sharded_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunConfigError, match="not a sharded checkpoint folder"):
        consolidate(tmp_path / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        consolidate_main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------ real 2-process runs (train.py)
def overrides(data_dir: Path, run_dir: Path, trainer: str) -> list[str]:
    return [f"hydra.run.dir={run_dir}", f"trainer={trainer}", "task=caption", "data.synthetic_dir=null",
            f"data.train_shards={data_dir}/train-*.tar", f"data.val_shards={data_dir}/val-*.tar",
            f"data.test_shards={data_dir}/test-*.tar", f"tokenizer.path={data_dir}/tokenizer.json",
            *[f"model.{k}={v}" for k, v in TINY.items()], "task.image_size=32", "data.batch_size=4",
            "data.shuffle_buffer=8", "data.num_workers=0", f"data.batches_per_epoch={STEPS_PER_EPOCH}",
            f"trainer.max_epochs={EPOCHS}", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
            "test_after_fit=false", "logger=csv", "logger.flush_logs_every_n_steps=1",
            f"callbacks.step_checkpoint.every_n_train_steps={EVERY}", "callbacks.progress_bar.refresh_rate=100"]


def env() -> dict:
    with socket.socket() as sock:  # each run its own rendezvous port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    out.pop("HYDRA_FULL_ERROR", None)
    return out


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            out |= {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}
    return out


def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """train.py runs two at a time, each with its own rendezvous port; all must succeed."""
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda cmd: run_command([sys.executable, str(ROOT / "train.py"), *cmd], ROOT, env(), 600),
                             commands))
    assert [p.returncode for p in done] == [0] * len(done), [p.stderr[-4000:] for p in done]
    return done


def train_and_kill(args: list[str], run_dir: Path, after_step: int) -> None:
    """SIGKILL the whole process group (both ranks) once rank 0 has logged `after_step`."""
    proc = start_train_until(args, env(), lambda: max(losses(run_dir), default=-1), after_step)
    kill_group(proc)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def fsdp2_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FSDP2 and DDP (2 processes each) side by side, the DDP run validating and testing after its last step; an
    FSDP2 run killed after its step-2 checkpoint and resumed from its folder and, consolidated, from one file; a
    1-process run that goes on for one more epoch from the consolidated last checkpoint of the FSDP2 run. Run dirs,
    and the DDP run's output (`ddp_output`)."""
    root = tmp_path_factory.mktemp("fsdp2")
    dirs = {"fsdp2": root / "fsdp2" / "run", "ddp": root / "ddp" / "run", "killed": root / "killed" / "first",
            "resumed": root / "killed" / "second", "single": root / "single" / "run",
            "from_file": root / "from_file" / "run"}
    _, ddp = run_all([overrides(synthetic_data_dir, dirs["fsdp2"], "fsdp2"),
                      overrides(synthetic_data_dir, dirs["ddp"], "ddp_sim") + EVALUATE])
    full = consolidate(dirs["fsdp2"] / "checkpoints" / "last.ckpt", root / "full.ckpt")
    with ThreadPoolExecutor(1) as pool:  # the 1-process run beside the one to kill
        single = pool.submit(run_all, [overrides(synthetic_data_dir, dirs["single"], "cpu") +
                                       [f"ckpt_path={full}", f"trainer.max_epochs={EPOCHS + 1}"]])
        train_and_kill(overrides(synthetic_data_dir, dirs["killed"], "fsdp2"), dirs["killed"], KILL_AFTER)
        single.result()
    killed = consolidate(dirs["killed"] / "checkpoints" / "last.ckpt", root / "killed.ckpt")
    run_all([overrides(synthetic_data_dir, dirs["resumed"], "fsdp2") + ["ckpt_path=last"],
             overrides(synthetic_data_dir, dirs["from_file"], "fsdp2") + [f"ckpt_path={killed}"]])
    return dirs | {"full": full, "ddp_output": ddp.stdout + ddp.stderr}


@pytest.mark.slow
def test_fsdp2_losses_equal_the_replicated_run(fsdp2_runs: dict[str, Path]) -> None:
    sharded, replicated = losses(fsdp2_runs["fsdp2"]), losses(fsdp2_runs["ddp"])
    assert sorted(sharded) == sorted(replicated) == list(range(STEPS_PER_EPOCH * EPOCHS))
    for step, loss in replicated.items():
        assert sharded[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    assert (fsdp2_runs["fsdp2"] / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # a sharded folder


@pytest.mark.slow
def test_ddp_ranks_train_equal_batches_then_validate_and_test(fsdp2_runs: dict[str, Path]) -> None:
    steps = STEPS_PER_EPOCH * EPOCHS
    assert rank_counts(fsdp2_runs["ddp_output"]) == {0: (steps, steps), 1: (steps, steps)}, fsdp2_runs["ddp_output"]
    metrics = json.loads((fsdp2_runs["ddp"] / "metrics.json").read_text())
    assert {"val/caption/cider", "test/caption/cider"} <= set(metrics)


@pytest.mark.slow
def test_fsdp2_killed_and_resumed_from_its_sharded_checkpoint(fsdp2_runs: dict[str, Path]) -> None:
    folder = fsdp2_runs["killed"] / "checkpoints" / "last.ckpt"
    saved = torch.load(folder / "meta.pt", weights_only=True)["global_step"]
    assert saved in (KILL_AFTER // EVERY * EVERY, KILL_AFTER // EVERY * EVERY + EVERY)  # the kill may lag a step
    assert folder.is_symlink() and not [p for p in folder.parent.iterdir() if p.name.startswith(".last.ckpt.link")]
    reference, resumed = losses(fsdp2_runs["fsdp2"]), losses(fsdp2_runs["resumed"])
    assert sorted(resumed) == list(range(saved, STEPS_PER_EPOCH * EPOCHS))
    assert resumed == {step: reference[step] for step in resumed}  # bitwise: same batches, RNG, optimizer state
    assert losses(fsdp2_runs["from_file"]) == resumed  # the same checkpoint consolidated into one .ckpt


@pytest.mark.slow
def test_consolidated_checkpoint_is_laid_out_like_a_single_file_one(fsdp2_runs: dict[str, Path]) -> None:
    from ofa.checkpoint import read_checkpoint
    from ofa.checkpoint_io import AtomicCheckpointIO

    full = AtomicCheckpointIO().load_checkpoint(fsdp2_runs["full"])  # the trainer's own (safe) reader
    ddp = torch.load(fsdp2_runs["ddp"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert full.keys() == ddp.keys() and full["global_step"] == ddp["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert {k: v.shape for k, v in full["state_dict"].items()} == {k: v.shape for k, v in ddp["state_dict"].items()}
    for key, value in ddp["state_dict"].items():
        if "running_" not in key:  # BatchNorm statistics: FSDP2 keeps each rank's, DDP broadcasts rank 0's
            torch.testing.assert_close(full["state_dict"][key], value, atol=2e-3, rtol=0)
    (opt,), (ddp_opt,) = full["optimizer_states"], ddp["optimizer_states"]
    assert opt["param_groups"] == ddp_opt["param_groups"] and opt["state"].keys() == ddp_opt["state"].keys()
    assert read_checkpoint(fsdp2_runs["full"]).config.d_model == TINY["d_model"]  # init_from, ofa-convert-checkpoint
    steps = STEPS_PER_EPOCH * EPOCHS
    assert sorted(losses(fsdp2_runs["single"])) == list(range(steps, steps + STEPS_PER_EPOCH))  # resumed, 1 process


def test_a_sharded_folder_as_init_from_names_the_consolidation(tmp_path: Path) -> None:
    from ofa.checkpoint import read_checkpoint
    from ofa.safe_load import CheckpointError

    (tmp_path / "last.ckpt").mkdir()
    (tmp_path / "last.ckpt" / "meta.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="sharded checkpoint folder; .* ofa-consolidate"):
        read_checkpoint(tmp_path / "last.ckpt")
