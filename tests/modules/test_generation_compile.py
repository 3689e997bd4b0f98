"""`OFAModel.compile_decoding` (`module.compile.generation=true`): generation through the compiled cached decoder
step gives the eager outputs, and compiles a few times per shape class, not once per step. The backend counts and
runs the traced graphs as they are (no code generation); inductor's outputs (same tokens, scores within 1e-5) were
checked once by a test that took 57 s here, left out of the suite for its time (experiments/README.md,
"Compiled generation")."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ofa.modules.config import OFAConfig
from ofa.modules.generation import GenerationConfig, SequenceGenerator
from ofa.modules.model import OFAModel

VOCAB, PAD, BOS, EOS = 200, 1, 0, 2


def nano_model() -> OFAModel:
    """A seeded ofa_nano whose `</s>` row (tied embedding and output projection) is scaled up, so that samples and
    beams end at different steps (the live rows shrink, as in real decoding)."""
    torch.manual_seed(0)
    model = OFAModel(OFAConfig.from_preset("ofa_nano", vocab_size=VOCAB)).eval()
    with torch.no_grad():
        model.encoder.embed_tokens.weight[EOS] *= 6
    return model


def batch(b: int = 3, src_len: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (b, src_len), generator=g)
    src[:, 0], src[:, -1] = BOS, EOS
    src[0, -3:] = PAD  # a padded source: the cross-attention key mask
    return src, torch.randn(b, 3, 64, 64, generator=g), torch.ones(b, dtype=torch.bool)


def generate(model: OFAModel, beam: int, seed: int = 0) -> list[list[tuple[list[int], float]]]:
    cfg = GenerationConfig(beam_size=beam, max_len_b=7, min_len=1)
    hyps = SequenceGenerator(model, cfg, pad=PAD, bos=BOS, eos=EOS).generate(*batch(seed=seed))
    return [[(h.tokens.tolist(), h.score) for h in sample] for sample in hyps]


@pytest.mark.parametrize("beam", [pytest.param(1, marks=pytest.mark.slow), 3])  # ~5-15 s each
def test_compiled_decoding_equals_eager_and_compiles_per_shape_not_per_step(beam: int) -> None:
    model = nano_model()
    eager = generate(model, beam)
    assert len({len(t) for sample in eager for t, _ in sample}) > 2  # samples end at different steps
    torch._dynamo.reset()
    counter = CompileCounter()  # a dynamo backend that counts the graphs and runs them as traced
    model.compile_decoding(backend=counter)
    compiled = generate(model, beam)
    assert compiled == eager  # same tokens, bitwise the same scores
    first = counter.frame_count
    assert 0 < first <= 4, first  # cache length 0, 1, >= 2, and 1 live row: not one per step (8 steps)
    other, want = generate(model, beam, seed=1), generate(nano_model(), beam, seed=1)  # another batch: no recompile
    assert [[t for t, _ in s] for s in other] == [[t for t, _ in s] for s in want]  # the same tokens
    # scores to float noise: an AVX2 CPU's kernels differ in the last bit on this batch's shapes
    assert [c for s in other for _, c in s] == pytest.approx([c for s in want for _, c in s], rel=1e-6)
    assert counter.frame_count == first
    assert all("_orig_mod" not in key for key in model.state_dict())  # the compiled step is outside the tree
    assert dict(model.named_modules()).keys() == dict(nano_model().named_modules()).keys()
