"""SequenceGenerator with the real OFAModel: parity with the OFA reference generator outputs
(fixtures/ofa_ref_small, `fsq_*`), and cached vs uncached decoding on a random small model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ofa.checkpoint import load_model
from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.modules.model import OFAModel
from ofa.modules.trie import Trie

safetensors_torch = pytest.importorskip("safetensors.torch")

SHARED = Path(os.environ.get("OFA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
FIXTURE = SHARED / "fixtures" / "ofa_ref_small"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "outputs.safetensors").exists(),
                                   reason=f"reference fixture not found at {FIXTURE} (set OFA_SHARED_DIR)")
PREFIXES = {"hf": True, "fs": False}  # output prefix -> disable_entangle


def _build_model(disable_entangle: bool) -> OFAModel:
    """The fixture's HF-port weights through ofa.checkpoint (keys renamed to fairseq's)."""
    return load_model(FIXTURE / "state_dict.safetensors", disable_entangle=disable_entangle).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, OFAModel]:
    return {prefix: _build_model(flag) for prefix, flag in PREFIXES.items()}


@pytest.fixture(scope="module")
def data() -> tuple[dict, dict]:
    inputs = safetensors_torch.load_file(FIXTURE / "inputs.safetensors")
    return inputs, safetensors_torch.load_file(FIXTURE / "outputs.safetensors")


def _generate(model: OFAModel, inputs: dict, beam_size: int):
    cfg = GenerationConfig(beam_size=beam_size, max_len_b=12, min_len=0, len_penalty=1.0, normalize_scores=True)
    return SequenceGenerator(model, cfg, pad=1, bos=0, eos=2).generate(
        inputs["input_ids"], inputs["patch_images"], inputs["patch_masks"])


def _unpad(row: torch.Tensor) -> list[int]:
    return row[row.ne(1)].tolist()


@needs_fixture
@pytest.mark.parametrize("prefix", PREFIXES)
def test_beam4_matches_reference(models, data, prefix):
    inputs, outputs = data
    ref_tokens, ref_scores = outputs[f"{prefix}.fsq_beam4.tokens"], outputs[f"{prefix}.fsq_beam4.scores"]
    ref_pos = outputs[f"{prefix}.fsq_beam4.positional_scores"]
    hyps = _generate(models[prefix], inputs, beam_size=4)
    for b, sample in enumerate(hyps):
        assert [h.tokens.tolist() for h in sample] == [_unpad(t) for t in ref_tokens[b]]
        assert torch.allclose(torch.tensor([h.score for h in sample]), ref_scores[b], atol=1e-4)
        for h, pos in zip(sample, ref_pos[b]):
            assert torch.allclose(h.positional_scores, pos[: len(h.tokens)], atol=1e-4)


@needs_fixture
@pytest.mark.parametrize("prefix", PREFIXES)
def test_greedy_matches_reference(models, data, prefix):
    inputs, outputs = data
    ref_tokens, ref_scores = outputs[f"{prefix}.fsq_greedy.tokens"], outputs[f"{prefix}.fsq_greedy.scores"]
    hyps = _generate(models[prefix], inputs, beam_size=1)
    for b, sample in enumerate(hyps):
        (h,) = sample
        assert h.tokens.tolist() == _unpad(ref_tokens[b])
        assert h.score == pytest.approx(ref_scores[b].item(), abs=1e-4)  # (no positional scores stored)


@needs_fixture
@pytest.mark.parametrize("prefix", PREFIXES)
def test_greedy_matches_hf_generate(models, data, prefix):
    """HF greedy (no pad masking, no forced </s>) agrees while neither generator had to force or mask."""
    inputs, outputs = data
    hf = outputs[f"{prefix}.hf_greedy.sequences"][:, 1:]  # drop the start token: (B, 12)
    assert not hf.eq(1).any() and not hf.eq(2).any()  # HF chose neither pad nor </s> here
    for b, (h,) in enumerate(_generate(models[prefix], inputs, beam_size=1)):
        assert h.tokens[:-1].tolist() == hf[b].tolist()  # ours then forces </s> at step max_len


class _Uncached(torch.nn.Module):
    """OFAModel recomputing the whole prefix every step (no cache)."""

    def __init__(self, model: OFAModel) -> None:
        super().__init__()
        self.model = model

    def encode(self, *args, **kwargs):
        return self.model.encode(*args, **kwargs)

    def new_cache(self):
        return self  # index_select below is a no-op

    def index_select(self, order: torch.Tensor):
        return self

    def decode(self, prev_output_tokens, encoder_out, code_masks=None, cache=None):
        return self.model.decode(prev_output_tokens, encoder_out, code_masks)[:, -1:]


@pytest.mark.parametrize("sampling", [False, True])
def test_cached_equals_uncached_on_random_model(sampling):
    """Cache reordering, batch shrinking, per-sample prefixes, a trie and code masks on the real decoder."""
    torch.manual_seed(0)
    cfg = OFAConfig(vocab_size=40, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_layers=[1, 1, 1],
                    init_std=0.3)
    model = OFAModel(cfg).eval()
    src = torch.randint(4, 40, (4, 7))
    src[:, 0], src[:, -1], src[2, 4:] = 0, 2, 1
    images, masks = torch.randn(4, 3, 32, 32), torch.tensor([True, False, True, True])
    prefix = torch.tensor([[5, 6], [7, 1], [1, 1], [8, 9]])
    trie = Trie([[0, 10, 11, 2], [0, 10, 12, 13, 2], [0, 14, 2], [0, 11, 11, 11, 11, 11, 2]])
    code_masks = torch.tensor([False, True, False, False])
    gen_cfg = GenerationConfig(beam_size=3, max_len_b=8, min_len=1, no_repeat_ngram_size=3, sampling=sampling,
                               seed=0, sampling_topk=5)
    results = []
    for m in (model, _Uncached(model)):
        for kw in (dict(prefix_tokens=prefix, constraint_trie=trie), dict(code_masks=code_masks)):
            hyps = SequenceGenerator(m, gen_cfg).generate(src, images, masks, **kw)
            results.append(([[h.tokens.tolist() for h in s] for s in hyps], [h.score for s in hyps for h in s]))
    for (tok_c, score_c), (tok_u, score_u) in zip(results[:2], results[2:]):
        assert tok_c == tok_u and score_c == pytest.approx(score_u, abs=1e-4)
    assert len({len(t) for sample in results[0][0] for t in sample}) > 1  # samples finished at different steps
