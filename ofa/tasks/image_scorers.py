"""CLIP-style image-text scorers: rerank the N samples of a caption, and score the chosen one (spec §7).

OFA reranks its text-to-image samples with OpenAI CLIP ViT-B/16 by the cosine similarity of each image with
the caption (`eval_clip_method='ti_sim'`) and reports the best one's similarity as the CLIP score.

- `OpenClipScorer`: any open_clip model from a LOCAL weights file (never the network). For OFA's scorer use
  `model_name="ViT-B-16"` with OpenAI's `ViT-B-16.pt` (the TorchScript archive that OpenAI's `clip` package
  downloads; QuickGELU is then switched on, as OpenAI trained it), or `model_name="ViT-B-16-quickgelu"`
  with a plain state dict of those weights (e.g. `open_clip_pytorch_model.bin` / `open_clip_model.safetensors`
  of `timm/vit_base_patch16_clip_224.openai`). Preprocessing is open_clip's (size, mean, std, bicubic
  resize of the shorter side + centre crop) done on tensors.
- `SyntheticClipScorer`: a small CLIP trained in seconds on the synthetic world (`train_synthetic_scorer`):
  a CNN image tower and a mean-of-word-embeddings text tower over the training captions' words, InfoNCE
  both ways with a learned temperature. Saved as safetensors + json (no pickle).

Images are float (B, 3, H, W) in [0, 1] or uint8 in [0, 255].
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ofa.tasks.image_judge import ConvTower, as_float_images, augment, resize_images


class ImageTextScorer:
    """Unit-norm embeddings of images and texts; `score` = cosine of each image with its own text."""

    def encode_images(self, images: Tensor) -> Tensor:  # (B, D), unit norm
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> Tensor:  # (B, D), unit norm
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """(B,) cosine similarity of image i with text i, float32 on the images' device."""
        if images.shape[0] != len(texts):
            raise ValueError(f"score: {images.shape[0]} images but {len(texts)} texts")
        sims = (self.encode_images(images) * self.encode_texts(texts)).sum(-1)
        return sims.float().to(images.device)


@torch.no_grad()
def rerank(scorer: ImageTextScorer, samples: Tensor, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(B, N, 3, H, W) samples of B captions -> (scores (B, N), order (B, N): sample indices, best first)."""
    b, n = samples.shape[:2]
    scores = scorer.score(samples.flatten(0, 1), [t for t in texts for _ in range(n)]).view(b, n)
    return scores, scores.argsort(dim=1, descending=True)


# ---- open_clip from a local file ----------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    """OpenAI's original CLIP files are TorchScript archives (a zip with `constants.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_open_clip(model_name: str, weights_path: str | Path) -> nn.Module:
    """An open_clip model built from its config and a local weights file (state dict, safetensors, or
    OpenAI's TorchScript archive); one-line FileNotFoundError naming the path when it is missing."""
    import open_clip

    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"open_clip weights not found: {path}")
    no_download = {"pretrained_image": False, "pretrained_text": False}
    if not _is_torchscript(path):  # an absolute path is never mistaken for a pretrained tag
        return open_clip.create_model(model_name, pretrained=str(path.resolve()), **no_download)
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True, **no_download)
    state = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI's fp16 weights
    missing = [k for k in model.state_dict() if k not in state]
    if missing:
        raise ValueError(f"{path}: not weights of open_clip model {model_name} (missing {missing[:3]} ...)")
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model


class OpenClipScorer(ImageTextScorer):
    """An open_clip model from a local weights file with its own preprocessing and tokenizer (module doc)."""

    def __init__(self, model_name: str, weights_path: str | Path, device: str | torch.device = "cpu") -> None:
        import open_clip

        self.device = torch.device(device)
        self.model = load_open_clip(model_name, weights_path).to(self.device).eval().requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.resize_mode = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"open_clip model {model_name}: resize_mode {self.resize_mode!r} is not supported")
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> normalised (B, 3, h, w) at the model's size: the shorter side resized (bicubic,
        antialiased, clamped to [0, 1] like PIL's) and centre-cropped, or squashed for `squash` models."""
        x = as_float_images(images.to(self.device))
        (h, w), (th, tw) = x.shape[-2:], self.image_size
        scale = max(th / h, tw / w)
        size = (th, tw) if self.resize_mode == "squash" else (max(th, round(h * scale)), max(tw, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)
        top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
        x = x[..., top:top + th, left:left + tw].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        return self.model.encode_image(self.preprocess(images), normalize=True)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device), normalize=True)


# ---- the synthetic world's scorer ---------------------------------------------------------------------
def caption_words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of a caption."""
    return re.findall(r"[a-z0-9]+", text.lower())


def build_vocab(captions: Sequence[str]) -> list[str]:
    """`<unk>` then the sorted distinct words of the captions."""
    return ["<unk>"] + sorted({w for c in captions for w in caption_words(c)})


class SyntheticClipScorer(nn.Module, ImageTextScorer):
    """CNN image tower + mean-pooled word embeddings; both projected to `embed_dim` and L2-normalised."""

    def __init__(self, vocab: Sequence[str], image_size: int = 64, width: int = 16, embed_dim: int = 64) -> None:
        super().__init__()
        self.vocab, self.image_size, self.width, self.embed_dim = list(vocab), image_size, width, embed_dim
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.image_tower = ConvTower(width, 2 * embed_dim)
        self.image_proj = nn.Linear(2 * embed_dim, embed_dim)
        self.words = nn.EmbeddingBag(len(self.vocab), 2 * embed_dim, mode="mean")
        self.text_proj = nn.Sequential(nn.ReLU(), nn.Linear(2 * embed_dim, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_images(self, images: Tensor) -> Tensor:
        x = resize_images(as_float_images(images.to(self.device)), self.image_size)
        return F.normalize(self.image_proj(F.relu(self.image_tower(x))), dim=-1)  # (B, D)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        ids = [[self.index[w] for w in caption_words(t) if w in self.index] or [0] for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]], device=self.device).cumsum(0)
        flat = torch.tensor([i for row in ids for i in row], device=self.device)
        return F.normalize(self.text_proj(self.words(flat, offsets)), dim=-1)  # (B, D)

    def save(self, directory: str | Path) -> None:
        """`scorer.safetensors` + `scorer.json` (vocabulary and sizes) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "scorer.safetensors"))
        meta = {"vocab": self.vocab, "image_size": self.image_size, "width": self.width,
                "embed_dim": self.embed_dim}
        (directory / "scorer.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> SyntheticClipScorer:
        """The scorer saved by `save` (no pickle), in eval mode."""
        directory = Path(directory)
        meta_path, weights_path = directory / "scorer.json", directory / "scorer.safetensors"
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"synthetic scorer: {path} not found (write it with SyntheticClipScorer.save)")
        meta = json.loads(meta_path.read_text())
        scorer = cls(meta["vocab"], meta["image_size"], meta["width"], meta["embed_dim"])
        scorer.load_state_dict(load_file(str(weights_path)))
        return scorer.to(device).eval()


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, caption_ids: Tensor) -> Tensor:
    """Symmetric InfoNCE; rows with the same caption are all positives (uniform soft targets)."""
    logits = logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)  # symmetric: same.sum(0) == same.sum(1)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_synthetic_scorer(images: Tensor, captions: Sequence[str], steps: int = 200, batch_size: int = 64,
                           lr: float = 3e-3, seed: int = 0, image_size: int = 64, width: int = 16,
                           embed_dim: int = 64) -> SyntheticClipScorer:
    """Train on (N, 3, H, W) images and their N captions (vocabulary = the captions' words), with the
    judge's light augmentation so that decoded images are scored well. Returns it in eval mode."""
    if len(images) != len(captions):
        raise ValueError(f"train_synthetic_scorer: {len(images)} images but {len(captions)} captions")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scorer = SyntheticClipScorer(build_vocab(captions), image_size, width, embed_dim).train()
    data = resize_images(as_float_images(images), image_size)
    distinct = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([distinct[c] for c in captions])
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        image_emb = scorer.encode_images(augment(data[idx], gen))
        text_emb = scorer.encode_texts([captions[i] for i in idx.tolist()])
        loss = contrastive_loss(image_emb, text_emb, scorer.logit_scale, caption_ids[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return scorer.eval()
