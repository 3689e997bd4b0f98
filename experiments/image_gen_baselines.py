"""Judged accuracy of text-to-image baselines on the synthetic world's test captions (experiments/README.md).

    python experiments/image_gen_baselines.py [--synthetic-dir data/synthetic] [--vqgan data/synthetic/vq_nano]

Rows: real images (the judge's ceiling), the VQGAN's reconstruction of the true codes (the tokenizer's
ceiling), the codes of a random training image, uniformly random codes (both the baselines a model must
beat), each through the same judge as `task=image_gen` (`judge_all` = colour, shape and cell all right).
Needs the code shards and the judge, which `python train.py experiment=text_to_image_nano_synthetic` makes
(or `ensure_code_shards` / `ensure_synthetic_judges`).
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import torch
from PIL import Image

from ofa.datamodules.synthetic_codes import ensure_code_shards
from ofa.datamodules.synthetic_judges import ensure_synthetic_judges
from ofa.tasks.image_codes import decode_codes
from ofa.tasks.image_judge import ImageJudge, encode_labels, judge_accuracy
from ofa.vqgan_io import load_vqgan


def read_coded(shard: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(N, 3, H, W) uint8 images, (N, n) codes and the attributes of one code shard."""
    images, codes, attributes = [], [], []
    with tarfile.open(shard) as tar:
        for name in sorted(n for n in tar.getnames() if n.endswith(".json")):
            record = json.loads(tar.extractfile(name).read())
            image = Image.open(io.BytesIO(tar.extractfile(name[:-5] + ".png").read())).convert("RGB")
            w, h = image.size
            images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1))
            codes.append(torch.tensor(record["codes"]))
            attributes.append(record["objects"][0])
    return torch.stack(images), torch.stack(codes), attributes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-dir", default="data/synthetic")
    parser.add_argument("--vqgan", default="data/synthetic/vq_nano")
    parser.add_argument("--code-image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = ensure_code_shards(args.synthetic_dir, "image_gen", {"vqgan": args.vqgan,
                                                                "code_image_size": args.code_image_size})
    judge = ImageJudge.load(ensure_synthetic_judges(args.synthetic_dir)[0])
    vqgan = load_vqgan(args.vqgan).eval()
    images, codes, attributes = read_coded(root / "test-000000.tar")
    _, train_codes, _ = read_coded(root / "train-000000.tar")
    labels = encode_labels(attributes)
    g = torch.Generator().manual_seed(args.seed)
    rows = {
        "real test images": images,
        "VQGAN reconstruction of the true codes": decode_codes(vqgan, codes),
        "codes of a random training image": decode_codes(
            vqgan, train_codes[torch.randint(len(train_codes), (len(codes),), generator=g)]),
        "uniformly random codes": decode_codes(
            vqgan, torch.randint(vqgan.cfg.n_embed, codes.shape, generator=g)),
    }
    print(f"{'images (' + str(len(codes)) + ' test captions)':<42} {'all':>6} {'color':>6} {'shape':>6} "
          f"{'cell':>6} {'size':>6}")
    with torch.no_grad():
        for name, pixels in rows.items():
            acc = judge_accuracy(judge.predict(pixels), labels)
            print(f"{name:<42} {acc['all']:>6.3f} {acc['color']:>6.3f} {acc['shape']:>6.3f} {acc['cell']:>6.3f} "
                  f"{acc['size']:>6.3f}")


if __name__ == "__main__":
    main()
