"""Candidate sets: trie, prompt-aware targets, training masks and all-candidate scoring on a toy model."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from ofa.tasks.candidates import (
    CandidateSet,
    build_constraint_mask,
    build_decoder_prompt,
    build_prompted_target,
    load_candidates,
    predict_candidates,
    score_candidates,
)

BOS, PAD, EOS = 0, 1, 2
WORDS = ["<s>", "<pad>", "</s>", "<unk>", "red", "blue", "circle", "what", "color", "?"]
RED, BLUE, CIRCLE, WHAT, COLOR, QMARK = range(4, 10)


class WordTokenizer:
    """Word-level stand-in for OFATokenizer: ten ids, so masks and log-probs are easy to compute by hand."""

    bos, pad, eos, unk = BOS, PAD, EOS, 3

    def __len__(self) -> int:
        return len(WORDS)

    def encode(self, text: str) -> list[int]:
        return [WORDS.index(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(WORDS[i] for i in ids if i > 3)


@dataclass
class ToyEncoderOut:
    bias: Tensor  # (B, V) added to every logit of the sample

    def index_select(self, order: Tensor) -> "ToyEncoderOut":
        return ToyEncoderOut(self.bias.index_select(0, order))


class BigramModel(torch.nn.Module):
    """logits(next | prev) = table[prev] + per-sample bias: known logits for hand-computed scores."""

    def __init__(self, table: Tensor, biases: Tensor) -> None:
        super().__init__()
        self.table, self.biases = table, biases

    def encode(self, src_tokens: Tensor, patch_images=None, patch_masks=None) -> ToyEncoderOut:
        return ToyEncoderOut(self.biases[: src_tokens.size(0)])

    def decode(self, prev_output_tokens: Tensor, encoder_out: ToyEncoderOut, code_masks=None, cache=None) -> Tensor:
        logits = self.table[prev_output_tokens] + encoder_out.bias[:, None, :]  # (B, T, V)
        return logits[:, -1:] if cache is not None else logits


def toy_model() -> BigramModel:
    table = torch.zeros(len(WORDS), len(WORDS))
    table[:, WHAT] = 5.0  # a large logit on a token no answer may use: masking must remove it
    table[QMARK, RED], table[QMARK, BLUE] = 1.0, 0.0
    table[RED, EOS], table[RED, CIRCLE] = 0.0, 2.0
    biases = torch.zeros(2, len(WORDS))
    biases[1, BLUE] = 3.0  # sample 1 prefers "blue"
    return BigramModel(table, biases)


def log_sigmoid(x: float) -> float:
    """log(e^x / (e^x + 1)): log-prob of the preferred one of two allowed tokens, x logits apart."""
    return -math.log1p(math.exp(-x))


@pytest.fixture()
def cands() -> CandidateSet:
    return CandidateSet(WordTokenizer(), ["red", "blue", "red circle"])


def test_candidate_set_and_trie(cands: CandidateSet) -> None:
    assert cands.tokens == [[RED], [BLUE], [RED, CIRCLE]]
    assert sorted(cands.trie.next_tokens([BOS])) == [RED, BLUE]
    assert sorted(cands.trie.next_tokens([BOS, RED])) == [EOS, CIRCLE]
    assert cands.trie.next_tokens([BOS, RED, CIRCLE]) == [EOS]
    assert "red circle" in cands and "green" not in cands
    assert len(CandidateSet(WordTokenizer(), ["red", "red", "blue"])) == 2  # duplicates dropped


def test_load_candidates_list_and_index_dict(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(["yes", "no"]))
    (tmp_path / "b.json").write_text(json.dumps({"no": 1, "yes": 0, "maybe": 2}))
    assert load_candidates(tmp_path / "a.json") == ["yes", "no"]
    assert load_candidates(tmp_path / "b.json") == ["yes", "no", "maybe"]


@pytest.mark.parametrize("prompt_type, expected", [
    ("none", [BOS]), ("src", [BOS, WHAT, COLOR, QMARK, EOS]), ("prev_output", [BOS, WHAT, COLOR, QMARK]),
])
def test_decoder_prompt(prompt_type: str, expected: list[int]) -> None:
    source = torch.tensor([BOS, WHAT, COLOR, QMARK, EOS])
    assert build_decoder_prompt(source, prompt_type, BOS).tolist() == expected


def test_prompted_target_layout() -> None:
    prev, target = build_prompted_target(torch.tensor([BOS, WHAT, COLOR, QMARK]), torch.tensor([RED, CIRCLE]), EOS, PAD)
    assert prev.tolist() == [BOS, WHAT, COLOR, QMARK, RED, CIRCLE]
    assert target.tolist() == [PAD, PAD, PAD, RED, CIRCLE, EOS]
    prev, target = build_prompted_target(torch.tensor([BOS]), torch.tensor([BLUE]), EOS, PAD)
    assert prev.tolist() == [BOS, BLUE] and target.tolist() == [BLUE, EOS]


def test_training_constraint_mask(cands: CandidateSet) -> None:
    mask = build_constraint_mask(cands, torch.tensor([RED, CIRCLE]), prompt_len=3)  # (6, 10)
    assert mask.shape == (6, len(WORDS))
    assert not mask[:3].any()  # the question positions: all False (their target is pad)
    allowed = [sorted(torch.nonzero(row).squeeze(1).tolist()) for row in mask[3:]]
    assert allowed == [[RED, BLUE], [EOS, CIRCLE], [EOS]]


def test_mask_rows_outside_the_trie_are_unconstrained(cands: CandidateSet) -> None:
    rows = cands.answer_rows([BLUE, CIRCLE])  # "blue circle" is not a candidate
    assert sorted(torch.nonzero(rows[0]).squeeze(1).tolist()) == [RED, BLUE]
    assert rows[1].all() and rows[2].all()  # after "blue" the true next token (circle) is not allowed
    truncated = CandidateSet(WordTokenizer(), ["red circle", "blue"]).answer_rows([RED])  # cut to 1 token
    assert truncated[0].sum().item() == 2 and truncated[1].all()  # </s> after "red" is not in the trie


def test_scores_by_hand(cands: CandidateSet) -> None:
    model = toy_model()
    prompts = [torch.tensor([BOS, WHAT, COLOR, QMARK]), torch.tensor([BOS, QMARK])]  # different lengths
    enc = model.encode(torch.zeros(2, 3, dtype=torch.long))
    scores = score_candidates(model, enc, prompts, cands, chunk_size=20)  # (2, 3)
    # sample 0: after "?" {red: 1, blue: 0}; after "red" {</s>: 0, circle: 2}; single choices cost 0
    red, blue = log_sigmoid(1.0), log_sigmoid(-1.0)
    expected0 = [red + log_sigmoid(-2.0), blue, red + log_sigmoid(2.0)]
    # sample 1: bias +3 on blue -> after "?" {red: 1, blue: 3}
    red1, blue1 = log_sigmoid(-2.0), log_sigmoid(2.0)
    expected1 = [red1 + log_sigmoid(-2.0), blue1, red1 + log_sigmoid(2.0)]
    assert scores.tolist()[0] == pytest.approx(expected0, abs=1e-5)
    assert scores.tolist()[1] == pytest.approx(expected1, abs=1e-5)
    # no length normalisation: the two-token "red circle" wins for sample 0
    assert scores.argmax(1).tolist() == [2, 1]


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunking_does_not_change_scores(cands: CandidateSet, chunk_size: int) -> None:
    model = toy_model()
    prompts = [torch.tensor([BOS, WHAT, COLOR, QMARK]), torch.tensor([BOS, QMARK])]
    enc = model.encode(torch.zeros(2, 3, dtype=torch.long))
    ref = score_candidates(model, enc, prompts, cands, chunk_size=20)
    assert torch.allclose(score_candidates(model, enc, prompts, cands, chunk_size=chunk_size), ref)


def test_predict_candidates_encodes_once(cands: CandidateSet) -> None:
    model = toy_model()
    calls = []
    encode = model.encode
    model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    batch = {"src_tokens": torch.zeros(2, 3, dtype=torch.long), "patch_images": None, "patch_masks": None,
             "decoder_prompts": [torch.tensor([BOS, WHAT, COLOR, QMARK]), torch.tensor([BOS, QMARK])]}
    preds, scores = predict_candidates(model, batch, cands, chunk_size=1)
    assert preds == ["red circle", "blue"] and scores.shape == (2, 3) and len(calls) == 1


@pytest.mark.slow
def test_mixture_fit_mixes_tasks_per_sample_and_logs_each_task(tokenizer, synthetic_data_dir) -> None:
    """The five tasks through OFADataModule's per-sample mixture and OFALitModule: constraint masks of the
    closed-set tasks share batches with caption samples (no mask), and every task logs its own metrics."""
    import pytorch_lightning as pl

    from ofa.datamodules.datamodule import LoaderConfig, OFADataModule, TaskSource
    from ofa.lit_module import OFALitModule
    from ofa.modules.config import OFAConfig
    from ofa.tasks.caption import CaptionConfig, CaptionTask
    from ofa.tasks.grounding import GroundingConfig, GroundingTask
    from ofa.tasks.image_classify import ImageClassifyConfig, ImageClassifyTask
    from ofa.tasks.snli_ve import SNLIVEConfig, SNLIVETask
    from ofa.tasks.vqa import VQAConfig, VQATask
    from ofa.utils.optim import OptimConfig, ScheduleConfig

    d, size = synthetic_data_dir, 32
    tasks = {"caption": CaptionTask(tokenizer, CaptionConfig(image_size=size, meteor=False, ptb_tokenizer=False)),
             "vqa": VQATask(tokenizer, VQAConfig(image_size=size, answers_file=str(d / "answers.json"))),
             "grounding": GroundingTask(tokenizer, GroundingConfig(image_size=size, max_image_size=size)),
             "snli_ve": SNLIVETask(tokenizer, SNLIVEConfig(image_size=size)),
             "image_classify": ImageClassifyTask(tokenizer, ImageClassifyConfig(
                 image_size=size, classes_file=str(d / "classes.json")))}
    mixture = [TaskSource(task, train_shards=str(d / "train-*.tar"), val_shards=str(d / "val-*.tar"))
               for task in tasks.values()]
    dm = OFADataModule(mixture, LoaderConfig(batch_size=10, eval_batch_size=8, num_workers=0, batches_per_epoch=2))
    batch = next(iter(dm.train_dataloader()))
    assert len(set(batch["task"])) > 1 and batch["constraint_masks"].shape[:2] == batch["target"].shape
    torch.manual_seed(0)
    lit = OFALitModule(OFAConfig.from_preset("ofa_nano", vocab_size=len(tokenizer)), tasks, OptimConfig(lr=1e-3),
                       ScheduleConfig())
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0)
    trainer.fit(lit, dm)
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"])
    for key in ("vqa/score", "grounding/acc", "snli_ve/acc", "image_classify/acc", "caption/cider"):
        assert f"val/{key}" in logged
    for name in tasks:
        assert torch.isfinite(logged[f"val/{name}/loss"])
