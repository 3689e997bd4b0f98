"""OFA's pretraining criterion in the lit module (spec §3.11): a batch of two mini-batches (image-text pairs
with patch sampling, extras with all patches) gives `loss_v1/ntok_v1 + loss_v2/ntok_v2` with sample size 1."""
from __future__ import annotations

import torch

from ofa.datamodules.collate import collate, collate_mini_batches
from ofa.lit_module import ModuleConfig, OFALitModule
from ofa.modules.config import OFAConfig
from ofa.tasks.base import Task, TaskConfig
from ofa.tasks.losses import label_smoothed_cross_entropy
from ofa.utils.optim import OptimConfig, ScheduleConfig

TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64)


def named(tokenizer, name: str, smoothing: float = 0.0) -> Task:
    task = Task(tokenizer, TaskConfig(image_size=32, label_smoothing=smoothing))
    task.name = name
    return task


def sample(task: Task, target: list[int], image: bool, conf: float = 1.0, patches: int | None = None):
    tok = task.tokenizer
    s = task.make_sample({"id": "x"}, torch.tensor([tok.bos, 10, 11, tok.eos]), torch.tensor(target),
                         torch.randn(3, 32, 32) if image else None, conf=conf)
    s.sample_patch_num = patches
    return s


def test_two_mini_batches_give_the_sum_of_their_per_token_losses(tokenizer) -> None:
    torch.manual_seed(0)
    tasks = {"pretrain": named(tokenizer, "pretrain", 0.1), "text_infill": named(tokenizer, "text_infill"),
             "detection": named(tokenizer, "detection")}
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY)
    module = OFALitModule(cfg, tasks, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=2), ModuleConfig())
    module.configure_model()
    v1 = [sample(tasks["pretrain"], [20, 21, 22], True, patches=2), sample(tasks["pretrain"], [23], True, patches=2)]
    v2 = [sample(tasks["text_infill"], [30, 31, 32, 33, 34], False, conf=2.0),
          sample(tasks["detection"], [40, 41], True, conf=2.0)]
    batch = collate_mini_batches([v1, v2], tokenizer.pad)
    assert batch["mini_batches"][0]["sample_patch_num"] == 2 and "sample_patch_num" not in batch["mini_batches"][1]

    calls = []
    model_forward = module.model.forward
    module.model.forward = lambda *args: calls.append(args[5]) or model_forward(*args)
    torch.manual_seed(1)
    loss, sample_size, losses = module.training_loss(batch)
    assert calls == [2, None] and sample_size == 1 and set(losses) == set(tasks)

    torch.manual_seed(1)  # the same random patches
    expected = 0.0
    for part, smoothing in ((collate(v1, tokenizer.pad), 0.1), (collate(v2, tokenizer.pad), 0.0)):
        logits = model_forward(part["src_tokens"], part["prev_output_tokens"], part["patch_images"],
                               part["patch_masks"], None, part.get("sample_patch_num"))
        out = label_smoothed_cross_entropy(logits, part["target"], epsilon=smoothing, pad=tokenizer.pad,
                                           conf=part["conf"])
        assert out.ntokens == {0.1: 4 + 2, 0.0: 6 + 3}[smoothing]  # targets + </s>
        expected = expected + out.loss / out.ntokens
    torch.testing.assert_close(loss, expected)
    conf_one = module.task_losses(batch["mini_batches"][1], model_forward(
        *[batch["mini_batches"][1][k] for k in ("src_tokens", "prev_output_tokens", "patch_images", "patch_masks")]))
    doubled = sum(o.loss for o in conf_one.values())  # conf 2.0 doubles the extras' log-probs
    batch["mini_batches"][1]["conf"] = torch.ones(2)
    halved = sum(o.loss for o in module.task_losses(batch["mini_batches"][1], model_forward(
        *[batch["mini_batches"][1][k] for k in ("src_tokens", "prev_output_tokens", "patch_images", "patch_masks")]
    )).values())
    torch.testing.assert_close(doubled, 2 * halved)


def test_a_batch_without_extras_keeps_the_same_form(tokenizer) -> None:
    task = named(tokenizer, "pretrain")
    batch = collate_mini_batches([[sample(task, [20], True, patches=4)], []], tokenizer.pad)
    assert batch["mini_batches"][1] is None and batch["id"] == ["x"] and batch["ntokens"] == 2


def test_pretraining_trains_and_its_checkpoint_initialises_fine_tuning(tokenizer, synthetic_shards, tmp_path) -> None:
    """Two optimizer steps of task=pretrain (image-text rows + detection every 2nd row) through Lightning, then
    `init_from` of that .ckpt into a grounding fine-tuning model: the weights arrive unchanged."""
    import pytorch_lightning as pl

    from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
    from ofa.datamodules.negative_samples import derive_negatives
    from ofa.lit_module import load_pretrained
    from ofa.modules.model import OFAModel
    from ofa.tasks.detection import DetectionConfig, DetectionTask
    from ofa.tasks.pretrain import PretrainConfig, PretrainTask

    negatives = derive_negatives([synthetic_shards["train"]]).write(tmp_path / "neg")
    assert {"red circle", "blue square"} <= set((negatives / "object.txt").read_text().split("\n"))
    tasks = {"pretrain": PretrainTask(tokenizer, PretrainConfig(image_size=32, max_image_size=32, sample_patch_num=2,
                                                                neg_sample_dir=str(negatives))),
             "detection": DetectionTask(tokenizer, DetectionConfig(image_size=32, max_image_size=32, conf=2.0))}
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY)
    module = OFALitModule(cfg, tasks, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=1), ModuleConfig())
    sources = [TaskSource(tasks["pretrain"], synthetic_shards["train"]),
               TaskSource(tasks["detection"], synthetic_shards["train"], every=2)]
    dm = OFADataModule(sources, LoaderConfig(batch_size=6, num_workers=0, batches_per_epoch=2, shuffle_buffer=8))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert {"train/pretrain/loss", "train/detection/loss"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "pretrain.ckpt")

    fine_tune = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), **TINY))
    load_pretrained(fine_tune, str(tmp_path / "pretrain.ckpt"))
    trained = module.model.state_dict()
    for key, value in fine_tune.state_dict().items():
        torch.testing.assert_close(value, trained[key], msg=key)
