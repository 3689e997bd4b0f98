"""Generate images from prompts with a trained or released OFA checkpoint: `ofa-generate-image`.

    ofa-generate-image --checkpoint outputs/text_to_image_nano_synthetic/<run>/checkpoints/best.ckpt \
        --vqgan data/synthetic/vq_nano --scorer synthetic:data/synthetic/image_gen/judge/../scorer \
        --prompt "a large red circle at the top left" --samples 8 --out generated/
    ofa-generate-image --checkpoint /ckpt/image_gen_large_best.pt --tokenizer /ckpt/ofa_bpe \
        --vqgan /ckpt/vqgan --scorer open_clip:ViT-B-16:/ckpt/clip/ViT-B-16.pt --prompt "a dog on a beach"

The same code path as validation (`ImageGenTask`): the prompt `what is the complete image? caption: ...`,
N samples (top-k / top-p / temperature, seeded), every step a code, decoded by the VQGAN, reranked by the
scorer. Writes `<out>/<i>.png` (the best image of prompt i) and `<out>/<i>-samples.png` (all, best first).
A platform checkpoint carries its tokenizer; an official `.pt` needs `--tokenizer` (OFA's BPE folder).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer
from torch.nn.utils.rnn import pad_sequence

from ofa.checkpoint import load_state_dict, read_checkpoint
from ofa.modules.model import OFAModel
from ofa.safe_load import CheckpointError
from ofa.tasks.image_codes import decode_codes, load_tokenizer_model
from ofa.tasks.image_eval import ScorerConfig, captioned_grid
from ofa.tasks.image_gen import ImageGenConfig, ImageGenTask
from ofa.tokenizer import OFATokenizer, build_tokenizer


def load_for_generation(checkpoint: str, tokenizer: str | None, device: str) -> tuple[OFAModel, OFATokenizer]:
    """The model (eval mode) and its vocabulary: the checkpoint's own, else `tokenizer` (an OFA BPE folder or
    a tokenizer.json)."""
    ckpt = read_checkpoint(checkpoint)
    if tokenizer:
        path = Path(tokenizer)
        tok = build_tokenizer("trained" if path.suffix == ".json" else "ofa", path)
    elif (ckpt.meta.get("tokenizer") or {}).get("json"):
        tok = OFATokenizer(Tokenizer.from_str(ckpt.meta["tokenizer"]["json"]))
    else:
        raise CheckpointError(f"{checkpoint}: carries no tokenizer; give --tokenizer (OFA's BPE folder)")
    model = OFAModel(ckpt.config)
    load_state_dict(model, ckpt.state_dict)
    return model.eval().to(device), tok


def parse_scorer(value: str | None) -> ScorerConfig:
    """`synthetic:DIR` | `open_clip:MODEL:WEIGHTS` | None."""
    if not value:
        return ScorerConfig()
    kind, _, rest = value.partition(":")
    if kind == "synthetic":
        return ScorerConfig(kind="synthetic", path=rest)
    if kind == "open_clip":
        name, _, path = rest.partition(":")
        return ScorerConfig(kind="open_clip", model_name=name, path=path)
    raise ValueError(f"--scorer {value!r}: expected synthetic:DIR or open_clip:MODEL:WEIGHTS")


def generate(model: OFAModel, task: ImageGenTask, prompts: Sequence[str]) -> torch.Tensor:
    """(P, K, 3, H, W) images in [0, 1] of K samples per prompt, best first (reranked when a scorer is set)."""
    tok = task.tokenizer
    device = next(model.parameters()).device
    sources = [task.source(p) for p in prompts]
    batch = {"src_tokens": pad_sequence(sources, batch_first=True, padding_value=tok.pad).to(device),
             "patch_masks": torch.zeros(len(prompts), dtype=torch.bool, device=device),
             "code_masks": torch.ones(len(prompts), dtype=torch.bool, device=device)}
    codes = task.generate_codes(model, batch)  # (P, K, N)
    p, k, n = codes.shape
    flat = decode_codes(load_tokenizer_model(task.cfg.vqgan), codes.view(p * k, n))  # (P*K, 3, H, W)
    images = flat.view(p, k, *flat.shape[1:])
    scorer = task.evaluator.scorer()
    if scorer is not None and k > 1:
        texts = [c for c in prompts for _ in range(k)]
        order = scorer.score(images.flatten(0, 1), texts).view(p, k).argsort(1, descending=True).cpu()
        images = torch.stack([im[o] for im, o in zip(images, order)])
    return images


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    return Image.fromarray(image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-generate-image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="platform .ckpt / dir, official .pt, HF-port dir")
    parser.add_argument("--vqgan", required=True, help="the VQGAN: a dir with model.yaml + last.ckpt")
    parser.add_argument("--prompt", action="append", required=True, help="a caption (repeat for several)")
    parser.add_argument("--tokenizer", help="OFA's BPE folder or a tokenizer.json (checkpoints without one)")
    parser.add_argument("--scorer", help="reranker: synthetic:DIR or open_clip:MODEL:WEIGHTS")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--topk", type=int, default=256)
    parser.add_argument("--topp", type=float, default=-1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--code-image-size", type=int, help="pixels of an image (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="generated")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, tok = load_for_generation(args.checkpoint, args.tokenizer, args.device)
        cfg = ImageGenConfig(code_image_size=args.code_image_size or model.cfg.code_image_size,
                             vqgan=str(Path(args.vqgan).expanduser()), scorer=parse_scorer(args.scorer))
        gen = cfg.generation
        gen.beam_size, gen.sampling_topk, gen.sampling_topp = args.samples, args.topk, args.topp
        gen.temperature, gen.seed = args.temperature, args.seed
        task = ImageGenTask(tok, cfg)
        images = generate(model, task, args.prompt)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"ofa-generate-image: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (samples, prompt) in enumerate(zip(images, args.prompt)):
        to_pil(samples[0]).save(out / f"{i}.png")
        captioned_grid([(im, f"{prompt} #{j + 1}") for j, im in enumerate(samples)]).save(out / f"{i}-samples.png")
        print(f"{out / f'{i}.png'}: {prompt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
