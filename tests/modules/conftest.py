"""Tiny OFA configs, models and batches shared by the module tests (CPU, milliseconds per forward).

- `tiny`: a `Tiny` (vocabulary size and special ids, `config(**overrides)`, `batch(...)`).
- `tiny_model`: a seeded `OFAModel(tiny.config())` in eval mode; session-scoped, so tests must not
  change it (no training steps, no `load_state_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ofa.modules.config import OFAConfig
from ofa.modules.model import OFAModel


@dataclass(frozen=True)
class Tiny:
    """d_model 32, 2+2 layers, 4 heads, a one-block-per-stage ResNet: 32x32 images give 2x2 patches."""

    vocab: int = 120
    pad: int = 1
    bos: int = 0
    eos: int = 2

    def config(self, **overrides) -> OFAConfig:
        base = dict(vocab_size=self.vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    resnet_type="resnet18", resnet_layers=[1, 1, 1], code_image_size=32)
        return OFAConfig.from_dict({**base, **overrides})

    def batch(self, b: int = 4, src_len: int = 9, tgt_len: int = 7, seed: int = 1) -> dict:
        """Images 32x32 (2x2 patches); sample 0's source and sample 1's target are padded; sample 1 is
        text-only; samples 2 and 3 are image-code targets (`b` <= 4)."""
        g = torch.Generator().manual_seed(seed)
        src = torch.randint(4, self.vocab, (b, src_len), generator=g)
        src[:, 0] = self.bos
        src[0, 6:] = self.pad
        tgt = torch.randint(4, self.vocab, (b, tgt_len), generator=g)
        tgt[:, 0] = self.bos
        if b > 1:
            tgt[1, 5:] = self.pad
        return {"src_tokens": src, "prev_output_tokens": tgt,
                "patch_images": torch.randn(b, 3, 32, 32, generator=g),
                "patch_masks": torch.tensor([True, False, True, True][:b]),
                "code_masks": torch.tensor([False, False, True, True][:b])}


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny()


@pytest.fixture(scope="session")
def tiny_model(tiny: Tiny) -> OFAModel:
    torch.manual_seed(0)
    return OFAModel(tiny.config()).eval()
