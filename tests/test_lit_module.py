"""OFALitModule: loss normalisation, per-task losses, optimiser groups, schedule, frozen embeddings, EMA and
checkpoints (loaded with weights_only=True)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ofa.datamodules.collate import collate
from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
from ofa.lit_module import EMAConfig, ModuleConfig, OFALitModule
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig
from ofa.tasks.caption import CaptionConfig, CaptionTask
from ofa.tasks.losses import label_smoothed_cross_entropy
from ofa.utils.optim import OptimConfig, ScheduleConfig, param_groups, polynomial_factor

TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64)


def make_task(tokenizer, name: str = "caption") -> CaptionTask:
    gen = GenerationConfig(beam_size=2, max_len_b=4, no_repeat_ngram_size=3, return_all=False)
    task = CaptionTask(tokenizer, CaptionConfig(image_size=32, generation=gen, meteor=False, ptb_tokenizer=False))
    task.name = name
    return task


def make_module(tokenizer, tasks=None, **module_kwargs) -> OFALitModule:
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY)
    tasks = tasks or {"caption": make_task(tokenizer)}
    return OFALitModule(cfg, tasks, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=2),
                        ModuleConfig(**module_kwargs))


def two_task_module(tokenizer) -> tuple[dict, OFALitModule, dict]:
    """Tasks "caption" and "other" (both captioning), a configured module over both and one batch of 4 samples,
    alternating "other" / "caption"."""
    from PIL import Image

    tasks = {"caption": make_task(tokenizer), "other": make_task(tokenizer, "other")}
    module = make_module(tokenizer, tasks)
    module.configure_model()
    raws = [{"id": f"s{i}", "captions": [f"a red circle {i}"], "image": Image.new("RGB", (32, 32))} for i in range(4)]
    batch = collate([tasks["caption" if i % 2 else "other"].preprocess(r, "train") for i, r in enumerate(raws)],
                    tokenizer.pad)
    return tasks, module, batch


def make_dm(tasks, shards) -> OFADataModule:
    (task,) = tasks.values()
    return OFADataModule([TaskSource(task, train_shards=shards["train"], val_shards=shards["val"])],
                         LoaderConfig(batch_size=4, eval_batch_size=8, num_workers=0, batches_per_epoch=3,
                                      shuffle_buffer=8))


def fit(module, dm, tmp_path: Path, **trainer_kwargs) -> pl.Trainer:
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                  limit_val_batches=1)
    trainer = pl.Trainer(**{**kwargs, **trainer_kwargs})
    trainer.fit(module, datamodule=dm)
    return trainer


def test_fit_logs_losses_lr_and_task_metrics(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    module = make_module(tokenizer)
    trainer = fit(module, make_dm(module.tasks, synthetic_shards), tmp_path)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/caption/loss", "train/lr", "val/caption/loss", "val/caption/cider",
                "val/caption/bleu4", "val/caption/rouge_l"):
        assert key in logged, key
    assert trainer.global_step == 3


def test_training_loss_is_the_token_sum(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    module = make_module(tokenizer)
    module.configure_model()
    batch = next(iter(make_dm(module.tasks, synthetic_shards).train_dataloader()))
    loss, ntokens, _ = module.training_loss(batch)
    out = label_smoothed_cross_entropy(module(batch), batch["target"], 0.1, tokenizer.pad)
    assert ntokens == batch["ntokens"] and loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


def text_infill_task(tokenizer):
    from ofa.tasks.text_infill import TextInfillConfig, TextInfillTask

    gen = GenerationConfig(beam_size=2, max_len_b=4, return_all=False)
    return TextInfillTask(tokenizer, TextInfillConfig(generation=gen, max_text_tokens=24))


def accumulation_samples(task) -> list:
    """16 text-infilling samples (no image: the ResNet's BatchNorm would see other batch statistics in
    micro-batches), targets of 2 to 9 words, short first: micro-batches of unequal token counts."""
    words = "a red circle left of the big blue square near".split()
    raws = [{"id": f"s{i}", "text": " ".join(words[:2 + i // 2])} for i in range(16)]
    return [task.preprocess(r, "val") for r in raws]  # val: a fixed masking per id


class GradCapture(pl.Callback):
    """The gradients the optimizer sees (after normalisation, before clipping)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def one_update(tokenizer, task, batches: list[dict], accumulate: int, tmp_path: Path) -> tuple[dict, dict]:
    """(gradients, parameters) after one optimizer step over `batches` from the same initial weights."""
    torch.manual_seed(0)
    module = make_module(tokenizer, {task.name: task})
    capture = GradCapture()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=accumulate,
                         gradient_clip_val=1.0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[capture])
    trainer.fit(module, train_dataloaders=loader)
    return capture.grads, {n: p.detach().clone() for n, p in module.named_parameters()}


def test_accumulation_at_equal_effective_batch_gives_the_same_update(tokenizer, tmp_path: Path) -> None:
    """16 x 1 and 8 x 2 over the same samples: the gradients are the sum of every token loss / all tokens
    (fairseq), not a mean of per-micro-batch means, so the update is the same."""
    task = text_infill_task(tokenizer)
    samples = accumulation_samples(task)
    halves = [collate(samples[:8], tokenizer.pad), collate(samples[8:], tokenizer.pad)]
    assert halves[0]["ntokens"] != halves[1]["ntokens"]  # where a mean of means would differ
    grads_16, params_16 = one_update(tokenizer, task, [collate(samples, tokenizer.pad)], 1, tmp_path)
    grads_8x2, params_8x2 = one_update(tokenizer, task, halves, 2, tmp_path)

    torch.manual_seed(0)
    reference = make_module(tokenizer, {task.name: task})
    reference.configure_model()
    batch = collate(samples, tokenizer.pad)
    (label_smoothed_cross_entropy(reference(batch), batch["target"], task.cfg.label_smoothing, tokenizer.pad).loss
     / batch["ntokens"]).backward()
    for name, p in reference.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_16[name], p.grad, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(grads_8x2[name], p.grad, rtol=1e-4, atol=1e-7)
    assert grads_16.keys() == grads_8x2.keys() and len(grads_16) > 10
    for name in params_16:
        torch.testing.assert_close(params_8x2[name], params_16[name], rtol=1e-5, atol=1e-6)


def test_mixture_batch_has_a_loss_per_task(tokenizer, synthetic_data_dir: Path) -> None:
    tasks, module, batch = two_task_module(tokenizer)
    with torch.no_grad():
        logits = module(batch)
        per_task = module.task_losses(batch, logits)
        joint = label_smoothed_cross_entropy(logits, batch["target"], 0.1, tokenizer.pad)
    assert set(per_task) == {"caption", "other"}
    assert sum(o.loss for o in per_task.values()).item() == pytest.approx(joint.loss.item(), rel=1e-5)
    assert sum(o.ntokens for o in per_task.values()) == joint.ntokens


def test_task_losses_equal_each_tasks_rows_alone(tokenizer) -> None:
    """The per-task losses of an interleaved batch (taken from the logits in one grouped selection) equal
    `label_smoothed_cross_entropy` on each task's rows alone, loss and logit gradient, with a per-sample
    confidence, one task's constraint masks and an ignored prefix."""
    tasks, module, batch = two_task_module(tokenizer)
    module.cfg.loss.ignore_prefix_size = 1
    tasks["other"].cfg.label_smoothing = 0.2
    batch["conf"] = torch.tensor([0.5, 1.0, 0.25, 2.0])
    B, T = batch["target"].shape
    masks = torch.rand(B, T, len(tokenizer), generator=torch.Generator().manual_seed(0)) > 0.3
    masks.scatter_(-1, batch["target"][..., None], True)  # the target stays allowed
    batch["constraint_masks"] = masks
    logits = torch.randn(B, T, len(tokenizer), generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = module.task_losses(batch, logits)
    (grad,) = torch.autograd.grad(sum(o.loss for o in out.values()), logits)
    want, want_grad = {}, torch.zeros_like(logits)
    for name in ("other", "caption"):
        rows = torch.tensor([t == name for t in batch["task"]])
        part = logits.detach()[rows].requires_grad_()
        want[name] = label_smoothed_cross_entropy(part, batch["target"][rows], tasks[name].cfg.label_smoothing,
                                                  tokenizer.pad, batch["conf"][rows], masks[rows],
                                                  ignore_prefix_size=1)
        want_grad[rows] = torch.autograd.grad(want[name].loss, part)[0]
    assert list(out) == ["other", "caption"]
    for name, o in out.items():
        assert o.ntokens == want[name].ntokens > 0
        torch.testing.assert_close(o.loss, want[name].loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(o.nll_loss, want[name].nll_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-9)
    assert grad[:, 0].abs().sum() == 0  # the ignored prefix


def test_projecting_only_the_target_positions_gives_the_full_logits_losses_and_gradients(tokenizer) -> None:
    """`task_losses(batch)` runs the model with `target_positions` (only the positions a loss reads are projected
    to the vocabulary): per-task losses and every parameter's gradient equal those from the full (B, T, V) logits,
    with an ignored prefix, padding, per-sample confidence and constraint masks; fewer rows than B*T are projected."""
    tasks, module, batch = two_task_module(tokenizer)
    module.cfg.loss.ignore_prefix_size = 1
    batch["conf"] = torch.tensor([0.5, 1.0, 0.25, 2.0])
    B, T = batch["target"].shape
    batch["target"][1, -2:] = tokenizer.pad
    masks = torch.rand(B, T, len(tokenizer), generator=torch.Generator().manual_seed(0)) > 0.3
    masks.scatter_(-1, batch["target"][..., None], True)
    batch["constraint_masks"] = masks
    module.train()

    def losses_and_grads(full: bool) -> tuple[dict, dict]:
        module.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks in both runs
        out = module.task_losses(batch, module(batch) if full else None)
        sum(o.loss for o in out.values()).backward()
        return out, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    projected = []
    hook = module.model.decoder.output_projection.register_forward_hook(lambda m, i, o: projected.append(o.shape))
    want, want_grads = losses_and_grads(full=True)
    got, got_grads = losses_and_grads(full=False)
    hook.remove()
    assert projected[0] == (B, T, len(tokenizer))
    assert projected[1] == (sum(o.ntokens for o in got.values()), len(tokenizer)) and projected[1][0] < B * (T - 1)
    for name in want:
        assert got[name].ntokens == want[name].ntokens
        torch.testing.assert_close(got[name].loss, want[name].loss, rtol=1e-5, atol=1e-6)
    assert set(got_grads) == set(want_grads) and len(got_grads) > 10
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_loss_weight_scales_only_its_task(tokenizer) -> None:
    """`task.loss_weight` multiplies that task's summed token loss in the training loss (its logged per-token loss
    and the token count stay as they are); a non-positive weight is refused with the key's name."""
    from ofa.errors import RunConfigError

    tasks, module, batch = two_task_module(tokenizer)
    with torch.no_grad():
        plain, ntokens, per_task = module.training_loss(batch)
        tasks["other"].cfg.loss_weight = 3.0
        weighted, ntokens_w, per_task_w = module.training_loss(batch)
    assert ntokens_w == ntokens
    assert per_task_w["other"].loss.item() == pytest.approx(per_task["other"].loss.item(), rel=1e-6)
    want = per_task["caption"].loss.item() + 3.0 * per_task["other"].loss.item()
    assert weighted.item() == pytest.approx(want, rel=1e-5) and weighted.item() > plain.item()
    tasks["other"].cfg.loss_weight = 0.0
    with pytest.raises(RunConfigError, match="task.loss_weight=0.0"):
        tasks["other"].check(module.model_cfg, tokenizer)


def test_bin_sigma_spreads_only_its_tasks_location_targets(tokenizer) -> None:
    """`task.bin_sigma` turns that task's `<bin_i>` targets into Gaussians over the bins in its loss (the other task's
    loss and every reported NLL stay as they are); a negative value is refused with the key's name."""
    from ofa.errors import RunConfigError

    tasks, module, batch = two_task_module(tokenizer)
    keep = batch["target"].ne(tokenizer.pad)
    bins = torch.randint(0, tokenizer.num_bins, batch["target"].shape, generator=torch.Generator().manual_seed(0))
    batch["target"] = torch.where(keep, tokenizer.bin_offset + bins, batch["target"])  # every target a location
    with torch.no_grad():
        logits = module(batch)
        plain = module.task_losses(batch, logits)
        tasks["other"].cfg.bin_sigma = 8.0
        spread = module.task_losses(batch, logits)
    assert spread["caption"].loss.item() == pytest.approx(plain["caption"].loss.item(), rel=1e-6)
    assert spread["other"].nll_loss.item() == pytest.approx(plain["other"].nll_loss.item(), rel=1e-6)
    assert abs(spread["other"].loss.item() - plain["other"].loss.item()) > 1e-3
    assert tasks["other"].bin_range() == (tokenizer.bin_offset, tokenizer.bin_offset + tokenizer.num_bins)
    tasks["other"].cfg.bin_sigma = -1.0
    with pytest.raises(RunConfigError, match="task.bin_sigma=-1.0"):
        tasks["other"].check(module.model_cfg, tokenizer)


def test_image_and_text_tasks_train_in_one_mixture(tokenizer, synthetic_data_dir: Path, tmp_path: Path) -> None:
    """Captioning from the image shards and text infilling (OFA's pretraining extra) from the text world's
    corpus, mixed per sample: batches hold both kinds, both losses are logged, both tasks are evaluated."""
    from ofa.tasks.text_infill import TextInfillConfig, TextInfillTask

    gen = GenerationConfig(beam_size=2, max_len_b=4, return_all=False)
    infill = TextInfillTask(tokenizer, TextInfillConfig(generation=gen, max_text_tokens=24))
    tasks = {"caption": make_task(tokenizer), "text_infill": infill}
    text = synthetic_data_dir / "text" / "text_infill"
    sources = [TaskSource(tasks["caption"], train_shards=str(synthetic_data_dir / "train-*.tar"),
                          val_shards=str(synthetic_data_dir / "val-*.tar")),
               TaskSource(infill, train_shards=str(text / "train-*.tar"), val_shards=str(text / "val-*.tar"))]
    dm = OFADataModule(sources, LoaderConfig(batch_size=8, eval_batch_size=4, num_workers=0, batches_per_epoch=3,
                                             shuffle_buffer=8))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["task"]) == {"caption", "text_infill"} and batch["patch_images"].shape[-1] == 32
    assert batch["patch_masks"].tolist() == [t == "caption" for t in batch["task"]]
    trainer = fit(make_module(tokenizer, tasks), dm, tmp_path)
    logged = trainer.callback_metrics
    for key in ("train/caption/loss", "train/text_infill/loss", "val/text_infill/rougeL", "val/caption/cider"):
        assert key in logged and torch.isfinite(logged[key]), key


def test_param_groups_skip_decay_on_norms_biases_embeddings(tokenizer) -> None:
    module = make_module(tokenizer, freeze_embeddings=True)
    module.configure_model()
    decay, no_decay = param_groups(module.model, 0.01, 1e-3)
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    embeddings = {id(m.weight) for m in module.model.modules() if isinstance(m, torch.nn.Embedding)}
    assert all(p.ndim >= 2 and id(p) not in embeddings for p in decay["params"])  # no bias, norm, embedding
    assert any(n.endswith("fc1.weight") for n in decayed)
    assert any("embed_positions" in n for n in undecayed) and any(n.endswith("bias") for n in undecayed)
    assert "encoder.embed_tokens.weight" not in decayed | undecayed  # frozen: not optimised at all
    assert not module.model.decoder.output_projection.weight.requires_grad  # tied, so frozen too


@pytest.mark.parametrize("warmup, total, end", [(10, 100, 0.0), (0, 50, 1e-5)])
def test_polynomial_schedule(warmup: int, total: int, end: float) -> None:
    peak = 1e-3
    lrs = [peak * polynomial_factor(s, total, warmup, peak, end, 1.0) for s in range(total + 5)]
    if warmup:
        assert lrs[0] == pytest.approx(peak / warmup) and lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx((peak - end) * (1 - (mid - warmup) / (total - warmup)) + end)
    assert lrs[total] == pytest.approx(end) and lrs[-1] == pytest.approx(end)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # monotone decay


def test_ema_is_checkpointed_and_restored(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    module = make_module(tokenizer, ema=EMAConfig(decay=0.5))
    trainer = fit(module, make_dm(module.tasks, synthetic_shards), tmp_path)
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert set(ckpt["ema"]) == {n for n, p in module.model.named_parameters() if p.requires_grad}
    weights = dict(module.model.named_parameters())
    name = "decoder.layers.0.fc1.weight"
    assert not torch.equal(ckpt["ema"][name], weights[name].detach())  # an average, not the weights
    fresh = make_module(tokenizer, ema=EMAConfig(decay=0.5))
    fresh.configure_model()
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.ema.shadow[name], ckpt["ema"][name])


def test_ema_weights_are_used_for_evaluation_only(tokenizer) -> None:
    module = make_module(tokenizer, ema=EMAConfig(decay=0.9))
    module.configure_model()
    before = copy.deepcopy(module.model.state_dict())
    for p in module.ema.shadow.values():
        p.add_(1.0)
    module.on_validation_epoch_start()
    name = "decoder.layers.0.fc1.weight"
    assert torch.allclose(module.model.state_dict()[name], before[name] + 1.0)
    module.ema.restore(module.model)
    assert torch.equal(module.model.state_dict()[name], before[name])


def test_bf16_mixed_precision_trains_and_evaluates_on_cpu(tokenizer, synthetic_shards, tmp_path: Path) -> None:
    """`trainer.precision=bf16-mixed` (autocast on CPU) with gradient clipping, as train.py runs it: finite
    training losses and evaluation metrics."""
    module = make_module(tokenizer)
    dtypes = set()
    module.configure_model()
    module.model.register_forward_hook(lambda mod, args, out: dtypes.add(out.dtype))
    trainer = fit(module, make_dm(module.tasks, synthetic_shards), tmp_path, precision="bf16-mixed",
                  gradient_clip_val=1.0)  # as train.py: clipping (Lightning refuses it with the fused AdamW kernel)
    assert trainer.global_step == 3 and dtypes == {torch.bfloat16}  # the logits of every forward
    logged = trainer.callback_metrics
    for key in ("train/loss", "val/caption/loss", "val/caption/cider", "val/caption/bleu4"):
        assert key in logged and torch.isfinite(logged[key]), key
    assert all(p.dtype == torch.float32 for p in module.parameters())  # bf16 compute, fp32 weights


@pytest.mark.slow  # TorchDynamo traces the model: ~10 s
def test_compiled_model_trains_like_eager_and_keeps_checkpoint_keys(tokenizer, synthetic_shards,
                                                                     tmp_path: Path) -> None:
    """`module.compile.enabled=true`: the forward goes through TorchDynamo (backend `eager` here: the traced
    graphs run as they are, no code generation; inductor is measured in experiments/README.md); the loss and
    the weights after an update equal the eager run's, and the saved state dict has the eager keys (no
    `_orig_mod.`) and loads into an eager module."""
    from ofa.lit_module import CompileConfig

    torch._dynamo.reset()
    losses, states = {}, {}
    for name, cfg in (("eager", CompileConfig()), ("compiled", CompileConfig(enabled=True, backend="eager"))):
        torch.manual_seed(0)
        module = make_module(tokenizer, compile=cfg)
        trainer = fit(module, make_dm(module.tasks, synthetic_shards), tmp_path / name, max_steps=1,
                      limit_val_batches=0)
        losses[name] = trainer.callback_metrics["train/loss"].item()
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt", weights_only=True)
        states[name] = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)["state_dict"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled run traced graphs
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-6)
    assert states["compiled"].keys() == states["eager"].keys()
    assert not any("_orig_mod" in k for k in states["compiled"])
    for key, value in states["eager"].items():
        torch.testing.assert_close(states["compiled"][key], value, rtol=1e-5, atol=1e-6)
    eager = make_module(tokenizer)
    eager.configure_model()
    eager.load_state_dict(states["compiled"])


def test_compile_generation_compiles_only_the_cached_decoder_step(tokenizer, monkeypatch) -> None:
    """`module.compile.generation=true` alone: `OFAModel.compile_decoding` (tests/modules/test_generation_compile.py)
    with dynamic shapes when `dynamic` is unset, and the config's backend; the forward stays eager."""
    from ofa.lit_module import CompileConfig
    from ofa.modules.model import OFAModel

    calls = []
    monkeypatch.setattr(OFAModel, "compile_decoding", lambda self, **options: calls.append(options))
    module = make_module(tokenizer, compile=CompileConfig(generation=True, backend="eager"))
    module.configure_model()
    assert calls == [{"backend": "eager", "mode": None, "fullgraph": False, "dynamic": True}]
    assert module.model._compiled_call_impl is None  # enabled=false: the forward is not compiled


def test_fourier_bin_init_changes_only_the_location_rows(tokenizer, tmp_path: Path) -> None:
    bins = slice(tokenizer.bin_offset, tokenizer.bin_offset + tokenizer.num_bins)
    plain, fourier = make_module(tokenizer), make_module(tokenizer, init_bins="fourier")
    torch.manual_seed(0)
    plain.configure_model()
    torch.manual_seed(0)
    fourier.configure_model()
    w0, w1 = plain.model.encoder.embed_tokens.weight, fourier.model.encoder.embed_tokens.weight
    assert torch.equal(w0[: bins.start], w1[: bins.start])  # text and code rows: OFA's init
    near = torch.nn.functional.cosine_similarity(w1[bins][:-1], w1[bins][1:], dim=-1)
    assert near.min() > 0.9 and not torch.allclose(w0[bins], w1[bins])
    with pytest.raises(Exception, match="module.init_bins='sine'"):
        make_module(tokenizer, init_bins="sine").configure_model()
