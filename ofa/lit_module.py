"""`OFALitModule`: the one place where the OFA model, the task(s) and the optimiser meet.

- Training: one teacher-forced forward per batch; the label-smoothed CE of `ofa.tasks.losses` is summed
  over tokens and tasks (a mixture batch holds several) and backpropagated as a sum; before the update the
  gradients are divided once by the target tokens of every micro-batch of the accumulation group on all
  ranks (fairseq's `sample_size` normalisation), so `accumulate_grad_batches` at equal effective batch
  leaves the update unchanged. Logs `train/loss`, `train/<task>/loss`, `train/lr`.
- Evaluation: each val/test dataloader holds one task; `task.evaluate(model, batch, metrics)` decodes
  and updates the task's torchmetrics, computed (synced across ranks) at the epoch end and logged as
  `<split>/<task>/<metric>`, next to `<split>/<task>/loss`.
- The model is created in `configure_model()` so sharding strategies build it already sharded;
  `init_from` loads pretrained weights there (fine-tuning), `ckpt_path` resumes everything else.
- Options: frozen token embeddings (OFA's caption/VQA recipes; tied, so the output projection too) and
  an EMA of the weights used for evaluation and stored in the checkpoint (`checkpoint["ema"]`).
- Non-finite guard: a step whose loss or any gradient is NaN/inf on any rank is skipped and counted
  (`train/nonfinite_skipped`); `max_nonfinite_steps` of them in a row raise `NonFiniteError`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import Tensor, nn

from ofa.errors import RunConfigError
from ofa.modules.config import OFAConfig
from ofa.modules.init import fourier_rows_
from ofa.modules.model import OFAModel
from ofa.tasks.base import Task
from ofa.tasks.losses import LossConfig, target_fields, target_positions, token_cross_entropy
from ofa.tasks.scst import check_scst_alone
from ofa.tuning import (TuningConfig, base_of, freeze_for_tuning, is_tuning_addition, parameter_report, tuned_config,
                        tuned_state, tuning_record)
from ofa.utils.ema import EMA
from ofa.utils.logging import get_logger
from ofa.utils.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler
from ofa.utils.wandb import is_wandb_logger, log_image_file, log_prediction_table

log = get_logger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient (train.py: one line, exit 3)."""


def nonfinite_step(loss: Tensor | None, params: Iterator[nn.Parameter], strategy: Any) -> bool:
    """True on every rank if any rank's loss or any gradient is NaN/inf (max-abs norms cannot overflow)."""
    grads = [getattr(p.grad, "_local_tensor", p.grad) for p in params if p.grad is not None]  # FSDP2: local
    flags = [torch.zeros((), device=grads[0].device if grads else "cpu")]
    if loss is not None:
        flags.append((~torch.isfinite(loss.detach())).any().float().to(flags[0].device))
    if grads:
        flags.append(nonfinite_grads(grads))
    bad = torch.stack(flags).sum()
    return bool(strategy.reduce(bad, reduce_op="sum") > 0)


def nonfinite_grads(grads: list[Tensor]) -> Tensor:
    """1.0 if a gradient holds a NaN or inf, else 0.0 (a 0-dim float tensor).

    The per-tensor 2-norms are NaN/inf for such a tensor; they are also inf for a finite one whose sum of
    squares overflows, so only those are checked again by max-abs, which cannot overflow. The 2-norms are the
    fast path: on a CPU `_foreach_norm` takes ~5x longer for max-abs (20 of a 450 ms step of the default run).
    """
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    suspect = (~torch.isfinite(norms)).nonzero().flatten().tolist()
    if not suspect:
        return norms.new_zeros(())
    max_abs = torch.stack(torch._foreach_norm([grads[i] for i in suspect], float("inf")))
    return (~torch.isfinite(max_abs)).any().to(norms.dtype)


@dataclass
class EMAConfig:
    decay: float = 0.0  # 0 = off; OFA's VQA recipe: 0.9999
    start_step: int = 0
    evaluate: bool = True  # validate/test with the averaged weights


@dataclass
class CompileConfig:
    """`torch.compile` of the model's forward (training and the evaluation loss; beam search calls the encoder
    and decoder directly). Compiled in place (`nn.Module.compile`), so parameter names and checkpoint keys
    carry no `_orig_mod.`. `generation`: the cached decoder step of generation too (`OFAModel.compile_decoding`,
    dynamic shapes unless `dynamic` says otherwise), independently of `enabled`. The other keys are
    `torch.compile`'s arguments."""

    enabled: bool = False
    generation: bool = False
    backend: str = "inductor"  # "aot_eager": no code generation (checks that a model traces)
    mode: str | None = None  # None (default) | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    dynamic: bool | None = None  # None: recompile once a shape varies, then dynamic shapes
    fullgraph: bool = False


@dataclass
class ModuleConfig:
    """Options of `OFALitModule` beyond model, tasks and optimiser (`module:` in train.yaml)."""

    freeze_embeddings: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)  # full | prompt | adapter | bitfit (ofa.tuning)
    log_samples: int = 8  # rows of the W&B prediction table per task and evaluation
    max_nonfinite_steps: int = 10  # stop after this many non-finite steps in a row (each is skipped); 0 = never
    debug_nan_steps: list[int] = field(default_factory=list)  # debug: make the loss NaN at these global steps
    compile: CompileConfig = field(default_factory=CompileConfig)
    # `<bin_i>` rows of a model built from scratch: "normal" (OFA's init) | "fourier" (ofa.modules.init)
    init_bins: str = "normal"


class OFALitModule(pl.LightningModule):
    """OFA model + tasks + AdamW/polynomial schedule (see the module docstring)."""

    def __init__(self, model_cfg: OFAConfig, tasks: dict[str, Task], optim: OptimConfig,
                 schedule: ScheduleConfig, module: ModuleConfig | None = None,
                 init_from: str | None = None, tokenizer_record: dict | None = None) -> None:
        super().__init__()
        self.tasks, self.optim_cfg, self.schedule_cfg = tasks, optim, schedule
        check_scst_alone({name: task.cfg for name, task in tasks.items()})  # training_loss: one criterion a batch
        self.cfg = module or ModuleConfig()
        self.model_cfg = tuned_config(model_cfg, self.cfg.tuning)  # + prompt encoders / adapters
        self.tuning_base = init_from  # a tuned checkpoint keeps only the tuned weights and names this base
        self.strict_loading = self.cfg.tuning.mode == "full"
        self.init_from = init_from
        self.tokenizer_record = tokenizer_record  # ofa.checkpoint_io.tokenizer_record: saved in every .ckpt
        self.model: OFAModel | None = None
        self.ema: EMA | None = None
        self.metrics = nn.ModuleDict({name: nn.ModuleDict(t.build_metrics()) for name, t in tasks.items()})
        self._samples: dict[str, list] = defaultdict(list)  # task -> [(row, image)] for the W&B table
        self.nonfinite_skipped, self._nonfinite_in_row, self._skipped_step = 0, 0, False
        self._group_tokens = 0  # target tokens of the current accumulation group (this rank)

    # ---------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = OFAModel(self.model_cfg)
        if self.init_from:
            load_pretrained(self.model, self.init_from, self.tokenizer_record)
        else:
            self._init_bins()
        if self.cfg.freeze_embeddings:
            self.model.encoder.embed_tokens.weight.requires_grad_(False)
        freeze_for_tuning(self.model, self.cfg.tuning.mode)
        log.info(parameter_report(self.model, self.cfg.tuning.mode))
        strategy = self._trainer.strategy if self._trainer is not None else None
        if hasattr(strategy, "shard_model"):  # trainer=fsdp2: ofa.sharding.FSDP2Strategy
            self.model = strategy.shard_model(self.model)
        if self.cfg.ema.decay > 0:
            self.ema = EMA(self.model, self.cfg.ema.decay, self.cfg.ema.start_step)
        c = self.cfg.compile
        if c.enabled:  # last (after any sharding); in place: the parameter names stay
            self.model.compile(backend=c.backend, mode=c.mode, dynamic=c.dynamic, fullgraph=c.fullgraph)
        if c.generation:
            self.model.compile_decoding(backend=c.backend, mode=c.mode, fullgraph=c.fullgraph,
                                        dynamic=True if c.dynamic is None else c.dynamic)

    def _init_bins(self) -> None:
        """`module.init_bins=fourier`: location-token rows as Fourier features of their position (from scratch)."""
        if self.cfg.init_bins == "normal":
            return
        if self.cfg.init_bins != "fourier":
            raise RunConfigError(f"module.init_bins={self.cfg.init_bins!r}: expected 'normal' or 'fourier'")
        tok = next(iter(self.tasks.values())).tokenizer if self.tasks else None
        if tok is None or getattr(tok, "num_bins", 0) < 2:
            raise RunConfigError("module.init_bins=fourier: the tokenizer has no <bin_i> location tokens")
        fourier_rows_(self.model.encoder.embed_tokens.weight, tok.bin_offset, tok.num_bins, self.model_cfg.init_std)

    def forward(self, batch: dict[str, Any], target_positions: Tensor | None = None) -> Tensor:
        """Logits (B, T, V); with `target_positions` (N,) only those flattened positions' logits (N, V)."""
        patches = batch.get("sample_patch_num") if self.training else None  # pretraining: random patches
        return self.model(batch["src_tokens"], batch["prev_output_tokens"], batch.get("patch_images"),
                          batch.get("patch_masks"), batch.get("code_masks"), patches, target_positions)

    # ---------------------------------------------------------------- loss
    def task_losses(self, batch: dict[str, Any], logits: Tensor | None = None) -> dict[str, Any]:
        """LossOutput per task of the batch (rows grouped by `batch["task"]`).

        The target tokens of every task are taken at once, grouped by task (`target_positions`), and each task's loss
        runs on its slice. Without `logits` the model runs on the batch and projects only those positions to the
        vocabulary (with prompts in the decoder, `prompt_type: prev_output`, most positions carry no loss); given
        logits (B, T, V), the same positions are selected from them (as `target_tokens` does). (Boolean row and token masks per task cost
        a full-size zero gradient and an `index_put` each: 17% of the default mixture's step.)"""
        loss_cfg = self.cfg.loss
        names = list(dict.fromkeys(batch["task"]))
        target = batch["target"]
        groups = torch.tensor([names.index(t) for t in batch["task"]], device=target.device)  # (B,)
        positions, rows, counts = target_positions(target, self.model_cfg.pad_token_id, loss_cfg.ignore_prefix_size,
                                                   groups)
        selected = self(batch, positions) if logits is None else logits.flatten(0, 1).index_select(0, positions)
        tokens = (selected, *target_fields(positions, rows, target, batch.get("conf"), batch.get("constraint_masks")))
        chunks = zip(*(t.split(counts) if t is not None else [None] * len(names) for t in tokens))
        out = {}
        for name, (task_logits, task_target, task_conf, task_masks) in zip(names, chunks):
            task = self.tasks[name]
            cfg = task.cfg
            out[name] = token_cross_entropy(
                task_logits, task_target, task_conf, task_masks, cfg.label_smoothing, task.constraint_range(),
                drop_worst_ratio=loss_cfg.drop_worst_ratio, drop_worst_after=loss_cfg.drop_worst_after,
                update_num=self.global_step, encouraging_log_end=loss_cfg.log_end if loss_cfg.encouraging else None,
                drop_best_ratio=loss_cfg.drop_best_ratio, drop_best_after=loss_cfg.drop_best_after,
                bin_range=task.bin_range() if cfg.bin_sigma > 0 else None, bin_sigma=cfg.bin_sigma)
        return out

    def training_loss(self, batch: dict[str, Any]) -> tuple[Tensor, int, dict[str, Any]]:
        """Loss to backpropagate (token losses summed over tasks, not normalised: `normalise_grads` divides the
        gradients once per optimizer step), the batch's target tokens and the per-task outputs."""
        if "mini_batches" in batch:
            return pretraining_loss(self, batch["mini_batches"])
        name = batch["task"][0]
        criterion = self.tasks[name].training_criterion()
        if criterion is not None:  # SCST (ofa.tasks.scst): decoded candidates rewarded, no cross-entropy
            out, rewards = criterion(self.model, batch)
            self.log(f"train/{name}/reward", rewards.mean(), prog_bar=True, batch_size=len(batch["id"]))
            return out.loss, out.ntokens, {name: out}
        losses = self.task_losses(batch)
        loss = sum(self.tasks[name].cfg.loss_weight * o.loss for name, o in losses.items())  # weight 1: as OFA
        return loss, sum(o.ntokens for o in losses.values()), losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, ntokens, losses = self.training_loss(batch)
        self._group_tokens += ntokens
        bsz = len(batch["id"])
        for name, o in losses.items():
            self.log(f"train/{name}/loss", o.loss.detach() / max(o.ntokens, 1), batch_size=bsz)
        self.log("train/loss", loss.detach() / max(ntokens, 1), prog_bar=True, batch_size=bsz)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bsz)
        if self.global_step in self.cfg.debug_nan_steps:
            loss = loss * float("nan")
        return loss

    def on_train_start(self) -> None:
        self._group_tokens = 0  # target tokens of the accumulation group so far (this rank)

    def normalise_grads(self) -> None:
        """Divide the accumulated gradients by the target tokens of the whole group on all ranks (fairseq's
        `multiply_grads(1 / sample_size)`). Lightning divided each micro-batch's loss by
        `accumulate_grad_batches` and DDP/FSDP average over ranks: both are undone here."""
        tokens = torch.tensor(float(self._group_tokens), device=self.device)
        self._group_tokens = 0
        total = float(self.trainer.strategy.reduce(tokens, reduce_op="sum"))
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / max(total, 1.0)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale)  # one call for all (one `mul_` per parameter: ~200 a step)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Forward + backward (of the group's last micro-batch), gradient normalisation, then the update only if
        the loss and every gradient are finite on all ranks; otherwise the step is skipped (weights and
        optimizer state untouched) and counted. A GradScaler (fp16) skips inf steps itself."""
        def closure() -> Any:
            out = optimizer_closure()
            self.normalise_grads()
            return out

        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return super().optimizer_step(epoch, batch_idx, optimizer, closure)
        loss = closure()
        self._skipped_step = nonfinite_step(loss, self.parameters(), self.trainer.strategy)
        if not self._skipped_step:
            self._nonfinite_in_row = 0
            optimizer.step(closure=lambda: loss)
            return
        self.nonfinite_skipped, self._nonfinite_in_row = self.nonfinite_skipped + 1, self._nonfinite_in_row + 1
        limit = self.cfg.max_nonfinite_steps
        if 0 < limit <= self._nonfinite_in_row:
            raise NonFiniteError(f"{self._nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                                 f"(last at step {self.global_step}); stopping (module.max_nonfinite_steps={limit})")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), batch_size=len(batch["id"]))
        if self._skipped_step:
            return
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """`Trainer.predict`: the task's own decoding of the batch (`task.evaluate`, with throwaway metrics so
        the logged ones stay untouched), one row per sample (`id`, `prediction`, ...)."""
        task = self.tasks[batch["task"][0]]  # one task per predict dataloader
        metrics = {k: m.to(self.device) for k, m in task.build_metrics().items()}
        return task.evaluate(self.model, batch, metrics)

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        name = batch["task"][0]  # one task per eval dataloader
        out = self.task_losses(batch)[name]
        self.log(f"{split}/{name}/loss", out.loss / max(out.ntokens, 1), batch_size=len(batch["id"]),
                 sync_dist=True, add_dataloader_idx=False)
        rows = self.tasks[name].evaluate(self.model, batch, self.metrics[name])
        keep = self.cfg.log_samples - len(self._samples[name])
        images = batch.get("patch_images")
        for i, row in enumerate(rows[:max(keep, 0)]):
            self._samples[name].append((row, self._row_image(row, images[i] if images is not None else None, name)))
        for row in rows:
            row.pop("image", None)

    def _row_image(self, row: dict, image: Tensor | None, task: str) -> Tensor | None:
        """The picture of a logged prediction row: the task's own (`row["image"]`, (3,H,W) in [0, 1], e.g. a
        generated image) normalised like the inputs, else the input image."""
        own = row.pop("image", None)
        if own is None:
            return image.detach().cpu() if image is not None else None
        cfg = self.tasks[task].cfg
        mean, std = own.new_tensor(cfg.mean)[:, None, None], own.new_tensor(cfg.std)[:, None, None]
        return ((own - mean) / std).cpu()

    def _log_metrics(self, split: str) -> None:
        """Compute (and sync) every task metric, log `<split>/<task>/<name>`, reset."""
        for name, metrics in self.metrics.items():
            if name not in self._evaluated_tasks(split):
                continue
            for metric_name, metric in metrics.items():
                value = metric.compute()
                values = value if isinstance(value, dict) else {metric_name: value}
                for key, v in values.items():  # equal on every rank already; sync_dist just averages equals
                    self.log(f"{split}/{name}/{key}", v, sync_dist=True, add_dataloader_idx=False)
                metric.reset()
            self._log_task_media(name, split)
        self._log_samples(split)

    def _log_task_media(self, name: str, split: str) -> None:
        """What the task writes after an evaluation (e.g. a grid of generated images), logged to W&B."""
        path = self.tasks[name].end_evaluation(split, self.global_step)
        if path is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        for logger in (lg for lg in self.loggers if is_wandb_logger(lg)):
            log_image_file(logger, f"{split}/{name}/grid", path, self.global_step)

    def _evaluated_tasks(self, split: str) -> list[str]:
        """Tasks with a `split` dataloader (the datamodule knows); all tasks without a datamodule."""
        names = getattr(getattr(self.trainer, "datamodule", None), "eval_task_names", None)
        return list(names(split) if callable(names) else self.tasks)

    def _log_samples(self, split: str) -> None:
        """The W&B table of sample predictions (rank 0, W&B loggers only), then forget the samples."""
        loggers = [lg for lg in self.loggers if is_wandb_logger(lg)]
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            for name, items in self._samples.items():
                cfg = self.tasks[name].cfg
                for logger in loggers:
                    log_prediction_table(logger, f"{split}/{name}/samples", items, cfg.mean, cfg.std,
                                         self.global_step)
        self._samples.clear()

    def _use_ema(self) -> bool:
        return self.ema is not None and self.cfg.ema.evaluate

    def on_validation_epoch_start(self) -> None:
        if self._use_ema():
            self.ema.apply_to(self.model)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self._use_ema():
            self.ema.restore(self.model)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_predict_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_predict_epoch_end(self) -> None:
        if self._use_ema():
            self.ema.restore(self.model)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        if self._use_ema():
            self.ema.restore(self.model)

    # ---------------------------------------------------------------- optimisation and checkpoints
    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self.model, self.optimizer_config())
        scheduler = build_scheduler(optimizer, self.schedule_cfg, int(self.trainer.estimated_stepping_batches),
                                    self.optim_cfg.lr_scale_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_config(self) -> OptimConfig:
        """`optim` with the fused AdamW kernel's auto choice (`fused: null`) turned off under Lightning's mixed
        precision with gradient clipping, which Lightning refuses with a fused optimizer (bf16-mixed on CPUs)."""
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        if self.optim_cfg.fused is None and mixed and self.trainer.gradient_clip_val:
            return replace(self.optim_cfg, fused=False)
        return self.optim_cfg

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides Lightning's state: what rebuilds the model from this file alone (`checkpoint["ofa"]`:
        config + tokenizer, for `init_from=` and `convert`), the non-finite counters and the EMA."""
        from ofa.checkpoint_io import model_record

        checkpoint["ofa"] = model_record(self.model_cfg, self.tokenizer_record)
        if self.cfg.tuning.mode != "full" and self.tuning_base:  # only the tuned weights + the base's name
            checkpoint["state_dict"] = tuned_state(checkpoint["state_dict"], self.model)
            checkpoint["tuning"] = tuning_record(self.cfg.tuning.mode, self.tuning_base)
        checkpoint["nonfinite"] = {"skipped": self.nonfinite_skipped, "in_row": self._nonfinite_in_row}
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        base = base_of(checkpoint)
        if base:  # a tuned checkpoint: the base weights first, Lightning then loads the tuned ones on top
            self.tuning_base = base
            load_pretrained(self.model, base, self.tokenizer_record)
        nonfinite = checkpoint.get("nonfinite", {})
        self.nonfinite_skipped, self._nonfinite_in_row = nonfinite.get("skipped", 0), nonfinite.get("in_row", 0)
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])


def pretraining_loss(module: OFALitModule, parts: list[dict | None]) -> tuple[Tensor, int, dict[str, Any]]:
    """OFA's pretraining criterion (spec §3.11): one forward per mini-batch (image-text pairs, extras; None =
    none on this rank), `loss_v1/ntok_v1 + loss_v2/ntok_v2` with sample size 1, so the update averages it over
    the micro-batches and ranks (fairseq's `sample_size=1`)."""
    losses, loss = {}, None
    for part in parts:
        if part is None:
            continue
        out = module.task_losses(part)
        losses.update(out)
        term = sum(o.loss for o in out.values()) / max(sum(o.ntokens for o in out.values()), 1)
        loss = term if loss is None else loss + term
    return loss, 1, losses


def load_pretrained(model: OFAModel, path: str, tokenizer_record: dict | None = None) -> None:
    """Weights only (no optimiser/step) from an official fairseq `.pt`, a platform run's `.ckpt`, an HF-port
    dir or a platform dir. A checkpoint of another size is refused on one line; a different vocabulary
    size resizes the (tied) embedding as fairseq OFA does; a checkpoint that carries another vocabulary
    than the run's (by content hash) is loaded with a warning naming both."""
    from ofa.checkpoint import CheckpointError, check_same_size, load_state_dict, read_checkpoint

    ckpt = read_checkpoint(path)
    check_same_size(ckpt, model.cfg)
    warn_other_tokenizer(ckpt.meta.get("tokenizer"), tokenizer_record, path)
    report = load_state_dict(model, ckpt.state_dict, strict=False, resize_embeddings=True)
    missing = [k for k in report.missing if not is_tuning_addition(k)]  # new prompts/adapters start fresh
    if missing or report.unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:10]}; unexpected keys {report.unexpected[:10]}")


def warn_other_tokenizer(held: dict | None, run: dict | None, path: str) -> None:
    """Warn when the checkpoint's vocabulary (sha256 of its JSON) is not the run's: token ids would mean
    other words. Fine-tuning an official model with another vocabulary is legitimate, hence no error."""
    if not held or not run or held.get("sha256") == run.get("sha256"):
        return
    log.warning("%s was trained with the tokenizer %s=%s (sha256 %.12s), this run uses %s=%s (sha256 %.12s); "
                "its token ids may mean other words", path, held.get("kind"), held.get("path"), held.get("sha256"),
                run.get("kind"), run.get("path"), run.get("sha256"))
