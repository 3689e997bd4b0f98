"""SCST (ofa/tasks/scst.py, spec §4.2): CIDEr-D with fixed document frequencies (hand-computed and against
pycocoevalcap), the leave-one-out baseline, the policy-gradient loss, the cached frequencies of training
shards, and one SCST update raising the probability of the rewarded candidate."""
from __future__ import annotations

import io
import json
import math
import tarfile

import pytest
import torch

from ofa.datamodules.references import cached_cider
from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel
from ofa.tasks.scst import (CiderD, ScstConfig, SelfCriticalLoss, candidate_batch, cider_sentence,
                            leave_one_out_baseline, policy_gradient_loss)


def test_cider_d_on_a_hand_computed_case() -> None:
    """Two images, one reference each: every n-gram has df 1, weight log 2. `a b` vs `a b`: unigram and
    bigram cosines 1, no 3/4-grams: 10 * (1 + 1) / 4 = 5. `a c` vs `a b`: unigram cosine 1/2: 1.25."""
    cider = CiderD.from_references([["a b"], ["c d"]])
    assert cider.ref_len == pytest.approx(math.log(2))
    assert cider.score("a b", ["a b"]) == pytest.approx(5.0)
    assert cider.score("a c", ["a b"]) == pytest.approx(1.25)
    assert cider.score("a b c", ["a b"]) < 5.0  # length penalty and diluted cosines


def test_cider_d_equals_pycocoevalcap_with_the_same_frequencies() -> None:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    refs = [["a red square on the left", "a small red square"], ["two blue circles", "a blue circle and a circle"],
            ["a green triangle above a red square", "green triangle"]]
    hyps = ["a red square", "a blue circle", "a green triangle on a square"]
    ref_scorer = CiderScorer(n=4, sigma=6.0)
    for h, r in zip(hyps, refs, strict=True):
        ref_scorer += (h, r)
    _, want = ref_scorer.compute_score()
    ours = CiderD.from_references(refs)
    got = [ours.score(h, r) for h, r in zip(hyps, refs, strict=True)]
    assert got == pytest.approx(list(want), abs=1e-9)


def test_cider_sentence_is_ofas_form() -> None:
    assert cider_sentence("A red square, left.") == "A red square left <eos>"


def test_leave_one_out_baseline_by_hand() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    torch.testing.assert_close(leave_one_out_baseline(rewards), torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]))
    assert torch.allclose((rewards - leave_one_out_baseline(rewards)).sum(1), torch.zeros(2))


def test_policy_gradient_loss_by_hand() -> None:
    """Uniform logits over V=4 (log p = -log 4); row 0: 2 tokens, advantage 1; row 1: 1 token + pad, -2."""
    logits = torch.zeros(2, 2, 4)
    target = torch.tensor([[3, 2], [3, 1]])
    out = policy_gradient_loss(logits, target, torch.tensor([1.0, -2.0]), pad=1)
    assert out.ntokens == 3
    assert out.loss.item() == pytest.approx(math.log(4) * (2 * 1.0 - 2.0))
    assert out.nll_loss.item() == pytest.approx(3 * math.log(4))


def test_candidate_batch_layout() -> None:
    prev, target = candidate_batch([[torch.tensor([5, 6, 2]), torch.tensor([7, 2])]], bos=0, pad=1)
    assert prev.tolist() == [[0, 5, 6], [0, 7, 1]] and target.tolist() == [[5, 6, 2], [7, 2, 1]]


def test_document_frequencies_are_cached_beside_the_shards(tmp_path) -> None:
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, caps in enumerate([["a b."], ["c d"]]):
            data = json.dumps({"id": str(i), "captions": caps}).encode()
            info = tarfile.TarInfo(f"{i:06d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    first = cached_cider([str(shard)], cider_sentence)
    cached = list(tmp_path.glob("cider_df-*.json"))
    assert len(cached) == 1 and first.df[("a", "b")] == 1 and first.df[("<eos>",)] == 2
    again = cached_cider([str(shard)], cider_sentence)
    assert again.df == first.df and again.ref_len == pytest.approx(math.log(2))


def test_an_scst_step_raises_the_rewarded_candidates() -> None:
    """Reward 1 for candidates containing token 7, 0 otherwise: one SGD step on the SCST loss raises the
    log-probability of the rewarded candidates relative to the others."""
    cfg = OFAConfig.from_dict(dict(vocab_size=12, d_model=16, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                   decoder_ffn_dim=32, resnet_type="resnet18", resnet_layers=[1, 1, 1]))
    torch.manual_seed(0)
    model = OFAModel(cfg).train()
    scst = ScstConfig(enabled=True, candidates=4)
    scst.generation.beam_size, scst.generation.max_len_b = 4, 4

    def reward(cands, batch):
        return torch.tensor([[float(7 in c.tolist()) for c in row] for row in cands])

    loss_fn = SelfCriticalLoss(scst, reward, pad=1, bos=0, eos=2)
    batch = {"src_tokens": torch.tensor([[0, 5, 6, 2], [0, 8, 9, 2]]), "patch_images": torch.randn(2, 3, 32, 32),
             "patch_masks": torch.tensor([True, True])}
    cands = loss_fn.candidates(model, batch)
    assert model.training and len(cands) == 2 and all(len(row) == 4 for row in cands)
    rewards = reward(cands, batch)
    if not ((rewards.sum(1) > 0) & (rewards.sum(1) < 4)).any():
        pytest.skip("no sample with both rewarded and unrewarded candidates")

    def scores() -> torch.Tensor:
        prev, target = candidate_batch(cands, 0, 1)
        with torch.no_grad():
            model.eval()
            lp = model(batch["src_tokens"].repeat_interleave(4, 0), prev, batch["patch_images"].repeat_interleave(4, 0),
                       batch["patch_masks"].repeat_interleave(4, 0)).log_softmax(-1)
            model.train()
        return (lp.gather(-1, target[..., None]).squeeze(-1) * target.ne(1)).sum(-1).view(2, 4)

    before = scores()
    opt = torch.optim.SGD([p for p in model.parameters()], lr=0.5)
    model.eval()  # no dropout: the step's own forward sees the same model as `scores`
    loss_fn.candidates = lambda m, b: cands  # the same candidates as measured
    out, got = loss_fn(model, batch)
    assert torch.equal(got, rewards) and out.ntokens == sum(c.numel() for row in cands for c in row)
    (out.loss / out.ntokens).backward()
    opt.step()
    gain = scores() - before  # (2, 4)
    mixed = (rewards.sum(1) > 0) & (rewards.sum(1) < 4)
    good = (gain * rewards)[mixed].sum() / rewards[mixed].sum()
    bad = (gain * (1 - rewards))[mixed].sum() / (1 - rewards)[mixed].sum()
    assert good > bad


def test_scst_trains_through_lightning_with_ema(tokenizer, synthetic_shards, tmp_path) -> None:
    """task.scst: Trainer.fit runs SCST steps (reward logged, cross-entropy not used), the document
    frequencies come from the training shards, and the EMA follows the SCST updates."""
    import pytorch_lightning as pl

    from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
    from ofa.datamodules.shards import expand_shards
    from ofa.lit_module import EMAConfig, ModuleConfig, OFALitModule
    from ofa.modules.generation import GenerationConfig
    from ofa.tasks.caption import CaptionConfig, CaptionTask
    from ofa.utils.optim import OptimConfig, ScheduleConfig

    scst = ScstConfig(enabled=True, candidates=2, generation=GenerationConfig(beam_size=2, max_len_b=4))
    task = CaptionTask(tokenizer, CaptionConfig(image_size=32, label_smoothing=0.0, meteor=False,
                                                ptb_tokenizer=False, scst=scst,
                                                generation=GenerationConfig(beam_size=2, max_len_b=4)))
    task.prepare_training(expand_shards(synthetic_shards["train"]))
    assert task.cider is not None and task.cider.ref_len > 0
    cfg = OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), d_model=32, encoder_layers=1,
                                decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                encoder_ffn_dim=64, decoder_ffn_dim=64)
    module = OFALitModule(cfg, {"caption": task}, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=1),
                          ModuleConfig(ema=EMAConfig(decay=0.5)))
    dm = OFADataModule([TaskSource(task, train_shards=synthetic_shards["train"], val_shards=synthetic_shards["val"])],
                       LoaderConfig(batch_size=2, eval_batch_size=4, num_workers=0, batches_per_epoch=2,
                                    shuffle_buffer=8))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and "train/caption/reward" in trainer.callback_metrics
    params = dict(module.model.named_parameters())
    assert any(not torch.equal(v, params[n].float()) for n, v in module.ema.shadow.items())


def test_scst_is_refused_in_a_mixture(tokenizer) -> None:
    """A mixture's batches mix tasks and SCST replaces a whole batch's loss: one line naming the key, at once."""
    from ofa.errors import RunConfigError
    from ofa.lit_module import OFALitModule
    from ofa.tasks.caption import CaptionConfig, CaptionTask
    from ofa.tasks.scst import check_scst_alone
    from ofa.tasks.vqa import VQAConfig
    from ofa.utils.optim import OptimConfig, ScheduleConfig

    scst = CaptionConfig(scst=ScstConfig(enabled=True))
    check_scst_alone({"caption": scst})  # SCST alone
    check_scst_alone({"caption": CaptionConfig(), "vqa": VQAConfig()})  # a mixture without SCST
    with pytest.raises(RunConfigError) as err:
        check_scst_alone({"vqa": VQAConfig(), "caption": scst})
    assert str(err.value) == ("task.tasks.caption.scst.enabled=true: SCST trains one task alone, but this mixture's "
                              "batches mix vqa, caption; run it with task=caption")
    tasks = {"caption": CaptionTask(tokenizer, scst), "caption_plain": CaptionTask(tokenizer, CaptionConfig())}
    with pytest.raises(RunConfigError, match="task.tasks.caption.scst.enabled=true"):
        OFALitModule(OFAConfig(), tasks, OptimConfig(), ScheduleConfig())


class ColourScorer:
    """A stand-in CLIP: an image's embedding is its mean RGB, a text's is the RGB of the colour it names."""

    COLOURS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        img = torch.nn.functional.normalize(images.float().mean((2, 3)), dim=-1)
        txt = torch.tensor([next(v for k, v in self.COLOURS.items() if k in t) for t in texts])
        return (img * torch.nn.functional.normalize(txt, dim=-1)).sum(-1)


def test_image_gen_scst_rewards_are_scaled_clip_scores(tokenizer, tiny_vqgan_dir) -> None:
    """Text-to-image stage 2 (spec §4.3): K sampled code grids per caption, decoded by the VQGAN, reward
    2.5 * cos(image, caption); the teacher-forced candidates are code tokens + </s> with code positions."""
    from ofa.datamodules.collate import collate
    from ofa.modules.generation import GenerationConfig
    from ofa.tasks.image_codes import decode_codes, load_tokenizer_model
    from ofa.tasks.image_eval import ScorerConfig
    from ofa.tasks.image_gen import ImageGenConfig, ImageGenTask

    gen = GenerationConfig(beam_size=2, sampling=True, sampling_topk=8, return_all=True, seed=3)
    task = ImageGenTask(tokenizer, ImageGenConfig(code_image_size=32, vqgan=str(tiny_vqgan_dir),
                                                  scorer=ScorerConfig(kind="synthetic", path="unused"),
                                                  scst=ScstConfig(enabled=True, candidates=2, generation=gen)))
    task.evaluator._scorer = ColourScorer()
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer), code_image_size=32, d_model=32,
                                           encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)).train()
    raws = [{"id": f"g{i}", "captions": [f"a {c} circle"], "codes": list(range(16))} for i, c in enumerate(["red", "blue"])]
    batch = collate([task.preprocess(r, "train") for r in raws], tokenizer.pad)
    loss_fn = task.training_criterion()
    cands = loss_fn.candidates(model, batch)
    start, end = task.constraint_range()
    assert all(c.numel() == 17 and c[-1] == tokenizer.eos and bool(((c[:-1] >= start) & (c[:-1] < end)).all())
               for row in cands for c in row)
    out, rewards = loss_fn(model, batch)  # seeded sampling: the same candidates
    codes = torch.stack([c[:-1] - start for row in cands for c in row])
    images = decode_codes(load_tokenizer_model(str(tiny_vqgan_dir)), codes)
    want = 2.5 * ColourScorer().score(images, ["a red circle"] * 2 + ["a blue circle"] * 2).view(2, 2)
    torch.testing.assert_close(rewards, want)
    assert out.ntokens == 4 * 17
    out.loss.backward()
    assert model.decoder.layers[0].fc1.weight.grad is not None
