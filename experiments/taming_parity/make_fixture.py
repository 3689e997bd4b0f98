"""Make `tests/fixtures/taming_gumbel/` with the reference, taming-transformers' `GumbelVQ`.

taming is never a project dependency: it is installed into a throw-away folder beside the project's venv
(`einops` is its one import the venv lacks). From the repository root:

    .venv/bin/pip install --no-deps --target /tmp/taming_pkgs taming-transformers-rom1504==0.0.6 einops==0.8.2
    PYTHONPATH=/tmp/taming_pkgs OMP_NUM_THREADS=1 .venv/bin/python experiments/taming_parity/make_fixture.py

Shims, here only: `taming.main` (taming's training script, which needs pytorch-lightning 1.x) is replaced by
its `instantiate_from_config`; `decode_code` is OFA's (`models/taming/models/vqgan.py`: codebook lookup ->
post_quant_conv -> decoder), as this taming release leaves `GumbelVQ.decode_code` unimplemented.

Writes (about 0.7 MB in all):
- `model.yaml`: taming's format, a small Gumbel VQGAN (ch 32, ch_mult [2,1,1]: 1x1 shortcuts both ways,
  attention at 8x8, f4, 64 codes).
- `last.ckpt`: as Lightning 1.x / taming save it: `state_dict` (with two `loss.*` keys standing in for the
  discriminator's), `callbacks` keyed by the `ModelCheckpoint` class, `optimizer_states`, `lr_schedulers`,
  `epoch`, `global_step`, `pytorch-lightning_version`. The random weights (seeded; norms perturbed too) are
  rounded to float8 (e4m3) and stored so, to keep the file small; loading casts them to float32 exactly.
- `reference.safetensors`: 3 input images (3x32x32 in [-1, 1]); taming's eval-mode `encode` codes under
  `torch.manual_seed(sample_seed)` (the Gumbel sample), the argmax codes `proj(quant_conv(encoder(x))).argmax(1)`,
  `decode_code` pixels of a random code grid and of the sampled codes, and a training-mode `forward` under
  `torch.manual_seed(train_seed)` (reconstruction and KL term). Codes are flattened row-major, (B, h*w).
- `f8_keys.json`: every state-dict key -> shape of taming's GumbelVQ at the f8 / 8192 config (built on the
  meta device, DummyLoss), in taming's order.

Finally it checks the project's side: `ofa.vqgan_io.load_vqgan` reproduces the reference, and taming's
`GumbelVQ(ckpt_path=...)` reads a bundle written by `ofa.vqgan_io.save_vqgan` and decodes identically.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "taming_gumbel"
SEED, SAMPLE_SEED, TRAIN_SEED = 0, 1234, 4321
BATCH = 3
SMALL = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
         "ch_mult": [2, 1, 1], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0}
F8 = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
      "ch_mult": [1, 1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [32], "dropout": 0.0}
SIDE = 32 // 2 ** (len(SMALL["ch_mult"]) - 1)  # the code grid of a 32x32 image
SCHEDULE = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9,
                       "lr_min": 1.0e-06}}


def instantiate_from_config(config: dict):  # noqa: ANN201 - taming.main's, without its Lightning 1.x imports
    module, name = config["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config.get("params", {}))


sys.modules["taming.main"] = types.ModuleType("taming.main")
sys.modules["taming.main"].instantiate_from_config = instantiate_from_config
from taming.models.vqgan import GumbelVQ  # noqa: E402


def taming_params(ddconfig: dict, n_embed: int, embed_dim: int) -> dict:
    return {"kl_weight": 1.0e-08, "embed_dim": embed_dim, "n_embed": n_embed, "monitor": "val/rec_loss",
            "temperature_scheduler_config": SCHEDULE, "ddconfig": ddconfig,
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}


def decode_code(model: GumbelVQ, codes: torch.Tensor) -> torch.Tensor:
    """OFA's `GumbelVQ.decode_code` for codes (B, h, w)."""
    quant = model.quantize.get_codebook_entry(codes.view(-1), list(codes.size()) + [model.quantize.embedding_dim])
    return model.decode(quant)


@torch.no_grad()
def randomize(model: GumbelVQ) -> None:
    """Seeded weights with every norm perturbed, proj scaled so the Gumbel noise changes some codes; then
    rounded to float8 values (what last.ckpt stores)."""
    torch.manual_seed(SEED)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif name == "quantize.embed.weight":
            p.normal_()
        else:
            gain = 6.0 if name == "quantize.proj.weight" else 1.0
            p.copy_(gain * torch.randn_like(p) / p[0].numel() ** 0.5)
        p.copy_(p.to(torch.float8_e4m3fn).float())


def lightning_checkpoint(model: GumbelVQ) -> dict:
    """`last.ckpt` the way Lightning 1.0 wrote taming's (trimmed optimizer state)."""
    state = {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    adam = {"state": {0: {"step": torch.tensor(1234.0), "exp_avg": torch.zeros(16), "exp_avg_sq": torch.zeros(16)}},
            "param_groups": [{"lr": 4.5e-06, "betas": (0.5, 0.9), "eps": 1e-08, "weight_decay": 0,
                              "amsgrad": False, "params": [0]}]}
    callback = {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.25), "current_score": torch.tensor(0.3),
                "best_model_path": "logs/gumbel/checkpoints/epoch=000003.ckpt", "dirpath": "logs/gumbel/checkpoints"}
    return {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "callbacks": {ModelCheckpoint: callback}, "optimizer_states": [adam, adam], "lr_schedulers": []}


@torch.no_grad()
def reference(model: GumbelVQ) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    images = torch.rand(BATCH, 3, 32, 32, generator=g) * 2 - 1
    random_codes = torch.randint(0, model.quantize.n_embed, (BATCH, SIDE, SIDE), generator=g)
    model.eval()
    torch.manual_seed(SAMPLE_SEED)
    _, _, (_, _, sampled) = model.encode(images)  # (B, h, w): a Gumbel sample at temperature 1.0
    argmax = model.quantize.proj(model.encode_to_prequant(images)).argmax(1)
    out = {"images": images, "sampled_codes": sampled.reshape(BATCH, -1), "argmax_codes": argmax.reshape(BATCH, -1),
           "random_codes": random_codes.reshape(BATCH, -1), "random_pixels": decode_code(model, random_codes),
           "sampled_pixels": decode_code(model, sampled)}
    model.train()
    torch.manual_seed(TRAIN_SEED)
    out["train_reconstruction"], kl = model(images)
    out["train_kl"] = kl.reshape(1)
    model.eval()
    changed = (out["sampled_codes"] != out["argmax_codes"]).float().mean().item()
    print(f"Gumbel noise changed {changed:.0%} of the codes")
    assert 0.1 < changed < 0.9, f"the Gumbel noise changed {changed:.0%} of the codes: rescale proj"
    return {k: v.contiguous() for k, v in out.items()}


def f8_keys() -> dict[str, list[int]]:
    with torch.device("meta"):
        model = GumbelVQ(**taming_params(F8, n_embed=8192, embed_dim=256))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def check_project(taming: GumbelVQ, ref: dict[str, torch.Tensor]) -> None:
    """ofa.vqgan_io reads the fixture and reproduces it; taming reads what ofa.vqgan_io.save_vqgan writes."""
    from ofa.vqgan_io import load_vqgan, save_vqgan

    ours = load_vqgan(OUT)
    torch.manual_seed(SAMPLE_SEED)
    assert torch.equal(ours.encode(ref["images"], sample=True), ref["sampled_codes"])
    assert torch.equal(ours.encode(ref["images"]), ref["argmax_codes"])
    with torch.no_grad():
        assert (ours.decode(ref["random_codes"]) - ref["random_pixels"]).abs().max() < 1e-4
    with tempfile.TemporaryDirectory() as tmp:
        save_vqgan(ours, None, tmp)
        params = OmegaConf.to_container(OmegaConf.load(Path(tmp) / "model.yaml"))["model"]["params"]
        again = GumbelVQ(**params, ckpt_path=str(Path(tmp) / "last.ckpt")).eval()
    codes = ref["random_codes"].view(BATCH, SIDE, SIDE)
    with torch.no_grad():
        assert torch.equal(decode_code(again, codes), decode_code(taming, codes))
    print("check: load_vqgan reproduces the reference; taming reads save_vqgan's bundle")


def main() -> None:
    torch.set_num_threads(1)
    taming = GumbelVQ(**taming_params(SMALL, n_embed=64, embed_dim=16))
    randomize(taming)
    ref = reference(taming)
    OUT.mkdir(parents=True, exist_ok=True)
    yaml = {"model": {"base_learning_rate": 4.5e-06, "target": "taming.models.vqgan.GumbelVQ",
                      "params": taming_params(SMALL, n_embed=64, embed_dim=16)}}
    (OUT / "model.yaml").write_text(OmegaConf.to_yaml(yaml))
    torch.save(lightning_checkpoint(taming), OUT / "last.ckpt")
    settings = {"sample_seed": SAMPLE_SEED, "train_seed": TRAIN_SEED, "temperature": 1.0}
    save_file(ref, OUT / "reference.safetensors", metadata={"settings": json.dumps(settings)})  # one key: stable
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in f8_keys().items()]  # one key a line
    (OUT / "f8_keys.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    with torch.serialization.safe_globals([ModelCheckpoint]):  # taming's own loader, on torch >= 2.6
        reread = GumbelVQ(**taming_params(SMALL, n_embed=64, embed_dim=16), ckpt_path=str(OUT / "last.ckpt"))
    pairs = zip(reread.state_dict().values(), taming.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(OUT.parents[2])}: {f.stat().st_size / 1e3:.0f} kB")
    check_project(taming, ref)


if __name__ == "__main__":
    main()
