"""DINOv2 and CLIP feature extractors, loaded through transformers from a hub id or a local folder.

- ``dinov2``: DINOv2 ViT-L/14 (``facebook/dinov2-large``) as dgm-eval uses it (Stein et al. 2023): a
  bicubic resize to 224×224, ImageNet mean/std normalisation, the layer-normed CLS token
  (``Dinov2Model``'s ``pooler_output``). The Fréchet distance on it is FD_DINOv2.
- ``clip``: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``) image embeddings, projected (what
  ``CLIPModel.get_image_features`` returns): resize of the shorter side to the model's input side
  (bicubic), a centre crop, CLIP's mean/std normalisation, as ``CLIPImageProcessor`` does.

Resizing is the clean resize of :mod:`.extractor` (bicubic with antialiasing, PIL's filter), on the
extractor's device and batched. Nothing is downloaded when ``HF_HUB_OFFLINE`` is set; without the weights
the error names the hub id and how to get them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .extractor import FeatureExtractor, _weights_hash, clean_resize, to_channels

logger = logging.getLogger(__name__)

DINOV2_ID = "facebook/dinov2-large"
CLIP_ID = "openai/clip-vit-large-patch14"
DINOV2_SIZE = 224  # dgm-eval's input side
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "CLIP_ID",
    "DINOV2_ID",
    "CLIPFeatures",
    "DINOv2Features",
    "load_clip",
    "load_dinov2",
    "load_hub_model",
]


def _offline() -> bool:
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.strip().upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def load_hub_model(cls, weights: str | Path, what: str, default_id: str, option: str = "--extractor-weights"):
    """``cls.from_pretrained(weights)`` in eval mode: a local folder, the Hugging Face cache, or (unless
    offline) a download; otherwise a ``FileNotFoundError`` that names the id, how to get it and the
    command-line ``option`` that takes the folder."""
    spec = str(weights)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{what} weights folder {local} has no config.json (save_pretrained writes one)"
            )
        return cls.from_pretrained(local).eval()
    attempts = [True] if _offline() else [True, False]
    for local_only in attempts:  # the cache first: no network call when the weights are there
        try:
            return cls.from_pretrained(spec, local_files_only=local_only).eval()
        except OSError as error:
            reason = error
    raise FileNotFoundError(
        f"no {what} weights for {spec!r}: not a local folder, not in the Hugging Face cache"
        f"{' (offline: HF_HUB_OFFLINE is set)' if _offline() else ', and the download failed'}. Get them on a "
        f"machine with internet with `huggingface-cli download {spec if '/' in spec else default_id}` (or "
        f"`python -c \"from transformers import {cls.__name__} as M; M.from_pretrained('{default_id}')"
        f".save_pretrained('{what.lower()}-weights')\"`), then copy the cache or pass the folder with "
        f"{option}. ({type(reason).__name__}: {str(reason).splitlines()[0][:200]})"
    )


VIT_SIZES = {384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g"}  # hidden width → ViT size letter


def _describe(kind: str, config, weights: str | Path, model: torch.nn.Module) -> str:
    """``"dinov2 ViT-L/14 (facebook/dinov2-large; weights sha256 …)"``: architecture, source, weights."""
    size = VIT_SIZES.get(config.hidden_size, f"{config.hidden_size}d")
    return f"{kind} ViT-{size}/{config.patch_size} ({weights}; weights sha256 {_weights_hash(model)})"


class DINOv2Features(FeatureExtractor):
    """The layer-normed CLS token of a ``Dinov2Model`` (dgm-eval's DINOv2 features).

    Args:
        model: a transformers ``Dinov2Model``.
        weights: where it came from (hub id or folder), for the report.
        size: input side (dgm-eval: 224).
    """

    fd_name = "fd_dinov2"
    kid_features = "the layer-normed CLS token (unit scale per coordinate, as the KID kernel assumes)"

    def __init__(self, model: torch.nn.Module, weights: str | Path = "given model", size: int = DINOV2_SIZE):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.dim = model.config.hidden_size
        self.name = _describe("dinov2", model.config, weights, model)
        self.preprocessing = (
            f"dgm-eval: RGB, bicubic-antialias resize to {size}×{size}, ImageNet mean/std normalisation"
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = clean_resize(to_channels(images, 3), self.size).clamp(0.0, 1.0)
        return ((images - self.mean) / self.std).to(self.model.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


class CLIPFeatures(FeatureExtractor):
    """Projected CLIP image embeddings (``CLIPModel.get_image_features``), and text embeddings for the
    CLIP score.

    Args:
        model: a transformers ``CLIPModel``.
        tokenizer: its tokenizer (for :meth:`embed_text`), or ``None``.
        weights: where it came from, for the report.
    """

    fd_name = "fd_clip"

    def __init__(self, model: torch.nn.Module, tokenizer=None, weights: str | Path = "given model"):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = model.config.vision_config.image_size
        self.dim = model.config.projection_dim
        self.name = _describe("clip", model.config.vision_config, weights, model)
        self.preprocessing = (
            f"CLIP: RGB, bicubic-antialias resize of the shorter side to {self.size}, centre crop "
            f"{self.size}×{self.size}, CLIP mean/std normalisation"
        )
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = to_channels(images, 3)
        height, width = images.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, int(height * scale)), max(self.size, int(width * scale)))  # as CLIP's
        images = clean_resize(images, resized).clamp(0.0, 1.0)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        images = images[..., top : top + self.size, left : left + self.size]
        return ((images - self.mean) / self.std).to(self.model.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return self.model.visual_projection(pooled)

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Projected text embeddings ``(P, d)`` (``CLIPModel.get_text_features``); prompts longer than the
        model's context are truncated, as torchmetrics' CLIPScore does."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no tokenizer: the CLIP score needs one beside the model")
        limit = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        device = self.mean.device
        out = self.model.text_model(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        return self.model.text_projection(out.pooler_output)


def clip_score_from_embeddings(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``100 × max(cos(image_i, text_i), 0)`` per row (torchmetrics' ``CLIPScore``), float64."""
    cosine = F.cosine_similarity(image.double(), text.double(), dim=-1)
    return 100.0 * cosine.clamp_min(0.0)


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "the dinov2 and clip extractors load their weights through transformers, which is not "
            "installed: `pip install 'transformers>=5'`"
        ) from error
    return transformers


def load_dinov2(weights: str | Path | None = None) -> DINOv2Features:
    """DINOv2 features from a hub id or folder (default :data:`DINOV2_ID`, ViT-L/14)."""
    Dinov2Model = _transformers().Dinov2Model

    weights = weights or DINOV2_ID
    model = load_hub_model(Dinov2Model, weights, "DINOv2", DINOV2_ID)
    logger.info("DINOv2 weights from %s", weights)
    return DINOv2Features(model, weights)


def load_clip(weights: str | Path | None = None) -> CLIPFeatures:
    """CLIP features (and its tokenizer, when saved beside it) from a hub id or folder (default
    :data:`CLIP_ID`, ViT-L/14)."""
    transformers = _transformers()
    AutoTokenizer, CLIPModel = transformers.AutoTokenizer, transformers.CLIPModel

    weights = weights or CLIP_ID
    model = load_hub_model(CLIPModel, weights, "CLIP", CLIP_ID)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
    except (OSError, ValueError):  # image features need no tokenizer; the CLIP score says so
        tokenizer = None
    logger.info("CLIP weights from %s", weights)
    return CLIPFeatures(model, tokenizer, weights)
