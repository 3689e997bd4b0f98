"""OFA model configuration: one dataclass and the presets (the one place model sizes are defined).

Field names follow the HF port's `config.json` where one exists (`d_model`, `encoder_ffn_dim`, ...);
defaults are the fairseq `ofa_large_architecture` defaults with every flag that the released checkpoints
were trained with switched on (NormFormer extras, `disable_entangle`, ...). Dropout / drop path default
to the architecture's 0.0; the training recipes (task / experiment configs) raise them.

Model sizes are defined once, as flat files `ofa/modules/presets/<name>.yaml` (shipped with the package);
`conf/model` is a link to that folder, so Hydra's `model=<name>`, `OFAConfig.from_preset(name)` and the
paired benchmark read the same file. Imports nothing from the model: `count_parameters` lives in `ofa.modules.model`.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path

RESNET_LAYERS: dict[str, list[int]] = {
    "resnet18": [2, 2, 2],
    "resnet34": [3, 4, 6],
    "resnet50": [3, 4, 6],
    "resnet101": [3, 4, 23],
    "resnet152": [3, 8, 36],
}


@dataclass
class OFAConfig:
    """Hyper-parameters of `OFAModel` (see spec §1.1)."""

    vocab_size: int = 59457
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    resnet_type: str = "resnet152"
    resnet_layers: list[int] | None = None  # overrides resnet_type's block counts (stages 1-3)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0
    code_image_size: int = 128
    normformer: bool = True  # scale_attn + scale_fc + scale_heads (attn_ln, ffn_layernorm, c_attn)
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    entangle_position_embedding: bool = False  # encoder: add learned positions to its inputs
    disable_entangle: bool = True  # decoder: True = released checkpoints (no positions added to inputs)
    freeze_resnet: bool = False  # FrozenBatchNorm-like: BN always uses running statistics
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    init_std: float = 0.02
    # parameter-efficient tuning (spec §8; set from `module.tuning` by `ofa.tuning.tuned_config`)
    encoder_prompt_length: int = 0  # deep-prompt prefix length in every encoder self-attention (0 = none)
    decoder_prompt_length: int = 0  # ... in every decoder self-attention
    prompt_projection: bool = False  # reparameterise the prompts through an MLP (OFA's --*-prompt-projection)
    prompt_dim: int = 0  # hidden width of that MLP; 0 = 2 * d_model (OFA's default)
    prompt_dropout: float = 0.2
    adapter_dim: int = 0  # bottleneck adapter after every layer's FFN (0 = none; OFA's scripts: 100)
    # fine-tuning at a larger image than pretraining (OFA's --interpolate-position, --orig-patch-image-size)
    interpolate_position: bool = False  # bilinear image positions from the orig_patch_image_size grid
    orig_patch_image_size: int = 256

    def __post_init__(self) -> None:
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by the number of attention heads")
        if self.resnet_layers is None and self.resnet_type not in RESNET_LAYERS:
            raise ValueError(f"unknown resnet_type {self.resnet_type!r}; known: {sorted(RESNET_LAYERS)}")

    @property
    def patch_stride(self) -> int:
        """Pixels per image patch side: the total stride of ResNet stages 1-3 (stem 4 x 2 x 2)."""
        return 16

    @property
    def resnet_blocks(self) -> list[int]:
        """Bottleneck block counts of ResNet stages 1-3."""
        return list(self.resnet_layers) if self.resnet_layers is not None else RESNET_LAYERS[self.resnet_type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OFAConfig:
        """Build from a dict, refusing unknown keys (a typo should fail loudly)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown OFAConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> OFAConfig:
        """`PRESETS[name]` with `overrides` on top; every other field keeps its default."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


PRESET_DIR = Path(__file__).resolve().parent / "presets"  # conf/model links here: one definition per size


def parse_preset(text: str) -> dict:
    """A preset file's flat `key: value` lines (comments and blank lines skipped) -> dict of python values."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = (part.strip() for part in line.partition(":"))
        if value in ("true", "false"):
            out[key] = value == "true"
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string, e.g. resnet152
    return out


def load_presets(folder: Path = PRESET_DIR) -> dict[str, dict]:
    """name -> the keys of `<folder>/<name>.yaml` (what differs from the `OFAConfig` defaults)."""
    return {path.stem: parse_preset(path.read_text()) for path in sorted(folder.glob("*.yaml"))}


PRESETS: dict[str, dict] = load_presets()  # ofa_nano (CPU-sized, not official), ofa_tiny ... ofa_huge
