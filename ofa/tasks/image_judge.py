"""The judge of the synthetic world: a small CNN that reads a single-object image's colour, shape, cell and size.

In the synthetic world (`ofa.datamodules.synthetic_world`) the true content of an image is known, so a
generated image can be judged: does it show the caption's colour, shape and grid cell? The judge is trained
on the world's REAL images (`render_single_object`) with light augmentation (blur, down/up-sampling, colour
jitter, noise) so that it also reads VQGAN-decoded images. Its penultimate features give an FID on the
judge's features (`ofa.tasks.metrics_image.JudgeFeatures`). Saved as safetensors + json (no pickle).

Images are float (B, 3, H, W) in [0, 1] or uint8 in [0, 255], any square size >= 32 (resized to the
judge's input size).
"""
from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ofa.datamodules.synthetic_world import COLORS, LOCATIONS, SHAPES, SIZES, render_single_object

ATTRIBUTES: dict[str, list[str]] = {"color": list(COLORS), "shape": list(SHAPES), "cell": LOCATIONS,
                                    "size": list(SIZES)}  # cell = row * 3 + col, named by `location_name`
JOINT = ("color", "shape", "cell")  # `all` = these three right at once (size is reported on its own)


def as_float_images(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] (B, 3, H, W) -> float [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def resize_images(images: Tensor, size: int) -> Tensor:
    """Float images -> (B, 3, size, size), bilinear with antialiasing (identity at that size already)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


class ConvTower(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, F). Three convolutions to an S/4 map, read two ways: `what` = its
    global max (translation-invariant colour / shape / size detectors) and `where` = a 4x4 average of a
    1x1-reduced map (the grid cell); both through a linear layer."""

    def __init__(self, width: int = 16, out_dim: int = 128) -> None:
        super().__init__()
        w = width
        self.convs = nn.Sequential(*_conv_bn_relu(3, w, 4, 2), *_conv_bn_relu(w, 2 * w, 3, 2),
                                   *_conv_bn_relu(2 * w, 4 * w, 3, 1))
        self.where = nn.Sequential(*_conv_bn_relu(4 * w, w, 1, 1))
        self.proj = nn.Linear(4 * w + 16 * w, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        x = self.convs(images * 2 - 1)  # (B, 4w, S/4, S/4)
        what = x.amax((2, 3))  # (B, 4w)
        where = F.adaptive_avg_pool2d(self.where(x), 4).flatten(1)  # (B, 16w)
        return self.proj(torch.cat([what, where], 1))  # (B, F)


class ImageJudge(nn.Module):
    """Predicts `color`, `shape`, `cell` and `size` of a single-object image (names in `ATTRIBUTES`)."""

    def __init__(self, image_size: int = 64, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        self.image_size, self.width, self.feature_dim = image_size, width, feature_dim
        self.tower = ConvTower(width, feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in ATTRIBUTES.items()})

    def prepare(self, images: Tensor) -> Tensor:
        """Any (B, 3, H, W) uint8 / [0, 1] images -> float at the judge's size, on its device."""
        device = next(self.parameters()).device
        return resize_images(as_float_images(images.to(device)), self.image_size)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Prepared images (`prepare`) -> logits per attribute {name: (B, classes)}."""
        feats = F.relu(self.tower(images))  # (B, F)
        return {k: head(feats) for k, head in self.heads.items()}

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (B, F), float32 on the images' device (eval mode: BatchNorm running stats)."""
        was_training = self.training
        feats = F.relu(self.eval().tower(self.prepare(images)))
        self.train(was_training)
        return feats.to(images.device)

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Class index per attribute {name: (B,) long}, on the images' device."""
        was_training = self.training
        logits = self.eval()(self.prepare(images))
        self.train(was_training)
        return {k: v.argmax(-1).to(images.device) for k, v in logits.items()}

    def save(self, directory: str | Path) -> None:
        """`judge.safetensors` + `judge.json` (sizes and class names) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "judge.safetensors"))
        meta = {"image_size": self.image_size, "width": self.width, "feature_dim": self.feature_dim,
                "attributes": ATTRIBUTES}
        (directory / "judge.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ImageJudge:
        """The judge saved by `save` (no pickle), in eval mode."""
        directory = Path(directory)
        meta_path, weights_path = directory / "judge.json", directory / "judge.safetensors"
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"image judge: {path} not found (write it with ImageJudge.save)")
        meta = json.loads(meta_path.read_text())
        if meta["attributes"] != ATTRIBUTES:
            raise ValueError(f"image judge {directory}: its class names differ from synthetic_world's")
        judge = cls(meta["image_size"], meta["width"], meta["feature_dim"])
        judge.load_state_dict(load_file(str(weights_path)))
        return judge.to(device).eval()


def render_dataset(n: int, seed: int, image_size: int = 64) -> tuple[Tensor, list[dict], list[str]]:
    """n single-object images of the synthetic world (`render_single_object`) as uint8 (n, 3, S, S), with
    their attributes and captions: training and test data of the judge and of the synthetic scorer."""
    rng = random.Random(seed)
    rows = [render_single_object(rng, image_size) for _ in range(n)]
    pixels = torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8) for im, _, _ in rows])
    images = pixels.view(n, image_size, image_size, 3).permute(0, 3, 1, 2).contiguous()
    return images, [attrs for _, attrs, _ in rows], [caption for _, _, caption in rows]


# ---- labels and accuracy ------------------------------------------------------------------------------
def encode_labels(attributes: Sequence[Mapping]) -> dict[str, Tensor]:
    """Per-image attribute dicts (names, or indices; `cell` as [row, col] or row * 3 + col) -> {name: (B,)}."""
    out: dict[str, list[int]] = {k: [] for k in ATTRIBUTES}
    for attrs in attributes:
        for name, classes in ATTRIBUTES.items():
            value = attrs[name]
            if name == "cell" and isinstance(value, (list, tuple)):
                value = int(value[0]) * 3 + int(value[1])
            out[name].append(classes.index(value) if isinstance(value, str) else int(value))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def judge_counts(predictions: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> dict[str, int]:
    """Number of images right per attribute, `all` (colour AND shape AND cell right) and `count`."""
    hits = {k: predictions[k].cpu() == labels[k].cpu() for k in ATTRIBUTES}
    joint = torch.stack([hits[k] for k in JOINT]).all(0)
    out = {k: int(v.sum()) for k, v in hits.items()}
    return {**out, "all": int(joint.sum()), "count": int(joint.numel())}


def judge_accuracy(predictions: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> dict[str, float]:
    """Accuracy per attribute (`color`, `shape`, `cell`, `size`) and `all` = colour, shape and cell all
    right on the same image (size is not part of `all`)."""
    counts = judge_counts(predictions, labels)
    n = max(counts.pop("count"), 1)
    return {k: v / n for k, v in counts.items()}


# ---- training -----------------------------------------------------------------------------------------
def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Light corruption resembling VQGAN reconstructions: per image a Gaussian blur (sigma 0-1 px),
    down/up-sampling (half the images), brightness and per-channel colour shifts, pixel noise."""
    b, _, h, _ = images.shape
    x = _blur(images, torch.rand(b, generator=gen))
    if torch.rand((), generator=gen) < 0.5:
        low = int(h * (0.5 + 0.4 * float(torch.rand((), generator=gen))))
        x = resize_images(resize_images(x, low), h)
    scale = 1 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2  # brightness x0.9-1.1
    shift = (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.08  # colour shift +-0.04
    noise = torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.04
    return (x * scale + shift + noise).clamp(0, 1)


def _blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image (5-tap kernel; sigma ~0 leaves the image as is)."""
    b, c, h, w = images.shape
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-taps**2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))  # (B, 5)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 5)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def train_judge(images: Tensor, labels: Mapping[str, Tensor], steps: int = 300, batch_size: int = 32,
                lr: float = 3e-3, seed: int = 0, augment_images: bool = True, image_size: int = 64,
                width: int = 16, feature_dim: int = 128) -> ImageJudge:
    """Train a judge on real single-object images (N, 3, H, W) and their labels {name: (N,)} (see
    `encode_labels`): AdamW, linearly decaying lr, the sum of the four cross-entropies. Returns it in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = ImageJudge(image_size, width, feature_dim)
    data = resize_images(as_float_images(images), image_size)
    targets = {k: labels[k].long() for k in ATTRIBUTES}
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    judge.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        batch = augment(data[idx], gen) if augment_images else data[idx]
        logits = judge(batch)
        loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()
