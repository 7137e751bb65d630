"""Transformers image classifiers (``AutoModelForImageClassification``: ViT, ConvNeXt, ResNet, …) as the
judges of class accuracy: the logits of images in [0, 1], as a feature extractor.

The output index is the class label: an ImageNet-1k classifier (``google/vit-base-patch16-224``) judges
an ImageNet DiT, whose class labels are ImageNet-1k ids. The preprocessing is the one the model's image
processor (``preprocessor_config.json`` beside the weights) describes: its size (a height and width, or
a shorter side with a centre crop), and its mean and std; the resize is the clean resize of
:mod:`.extractor` (bicubic, antialiased, batched on the model's device), as for every extractor of
``atomgen.eval``, not the processor's own filter. Without a processor config: the model config's
``image_size`` (else 224) and the ImageNet mean and std. Weights load as DINOv2's do
(:func:`~atomgen.eval.hub_features.load_hub_model`: a folder, the hub cache, or a download unless
offline).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from .extractor import FeatureExtractor, _weights_hash, clean_resize, to_channels
from .hub_features import IMAGENET_MEAN, IMAGENET_STD, _offline, _transformers, load_hub_model

logger = logging.getLogger(__name__)

IMAGENET_CLASSIFIER_ID = "google/vit-base-patch16-224"  # ImageNet-1k: the labels of an ImageNet DiT
DEFAULT_SIDE = 224  # the input side of a model config that names none

__all__ = ["IMAGENET_CLASSIFIER_ID", "HubClassifierLogits", "load_hub_classifier"]


class HubClassifierLogits(FeatureExtractor):
    """The class logits ``(B, num_labels)`` of a transformers image classifier; ``argmax`` of a row is the
    predicted class (:func:`~atomgen.eval.classify`).

    Args:
        model: an ``AutoModelForImageClassification`` model.
        processor: its image processor (the preprocessing), or ``None``: the model config's
            ``image_size`` (else 224) and the ImageNet mean and std.
        weights: where it came from (hub id or folder), for the report.
    """

    def __init__(self, model: torch.nn.Module, processor: Any = None, weights: str | Path = "given model"):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        config = model.config
        self.channels = getattr(config, "num_channels", 3)
        self.dim = config.num_labels
        self.name = f"{config.model_type} image classifier ({weights}; weights sha256 {_weights_hash(model)})"
        self.resize, self.crop, mean, std, origin = _input(processor, config)
        self.normalise = mean is not None
        shape = (1, len(mean or IMAGENET_MEAN), 1, 1)
        self.register_buffer("mean", torch.tensor(mean or IMAGENET_MEAN).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std or IMAGENET_STD).view(shape), persistent=False)
        resize = (
            f"resize to {self.resize[0]}×{self.resize[1]}"
            if isinstance(self.resize, tuple)
            else f"resize of the shorter side to {self.resize}"
        )
        crop = f", centre crop {self.crop[0]}×{self.crop[1]}" if self.crop else ""
        norm = f", mean {tuple(mean)} std {tuple(std)}" if mean is not None else ", no normalisation"
        self.preprocessing = f"{origin}: {self.channels} channels, bicubic-antialias {resize}{crop}{norm}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = to_channels(images, self.channels)
        images = clean_resize(images, _resized(images.shape[-2:], self.resize)).clamp(0.0, 1.0)
        if self.crop is not None:
            images = _centre_crop(images, self.crop)
        if self.normalise:
            images = (images - self.mean) / self.std
        return images.to(self.model.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


Side = tuple[int, int]


def _input(processor: Any, config: Any) -> tuple[Side | int, Side | None, tuple | None, tuple | None, str]:
    """``(resize, crop, mean, std, origin)``: resize to a ``(height, width)`` or the shorter side to an
    int, the centre crop or ``None``, the normalisation (``None``: none), and where they were read."""
    if processor is None:
        side = getattr(config, "image_size", None) or DEFAULT_SIDE
        side = tuple(side) if isinstance(side, list | tuple) else (side, side)
        origin = "no preprocessor_config.json: the model config's image_size, ImageNet mean/std"
        return side, None, IMAGENET_MEAN, IMAGENET_STD, origin
    factor = getattr(processor, "rescale_factor", 1 / 255)
    if getattr(processor, "do_rescale", True) and not math.isclose(factor, 1 / 255):
        raise ValueError(
            f"{type(processor).__name__} rescales pixels by {factor}, not 1/255: only classifiers that take "
            "pixel values in [0, 1] before their normalisation are supported"
        )
    size = processor.size if not isinstance(processor.size, int) else {"shortest_edge": processor.size}
    crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop = (crop_size.get("height"), crop_size.get("width")) if crop_size else None
    if size.get("height") and size.get("width"):
        resize: Side | int = (size.get("height"), size.get("width"))
    elif size.get("shortest_edge"):
        shorter = size.get("shortest_edge")
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct is not None:  # ConvNeXt's: below 384, resize to side / crop_pct and crop the side
            resize, crop = (
                (int(shorter / crop_pct), (shorter, shorter)) if shorter < 384 else ((shorter,) * 2, None)
            )
        else:
            resize, crop = shorter, crop or (shorter, shorter)  # the model takes squares
    else:
        raise ValueError(
            f"{type(processor).__name__} gives its size as {size}: expected a height and width, or a "
            "shortest edge"
        )
    if not getattr(processor, "do_normalize", True):
        return resize, crop, None, None, type(processor).__name__
    channels = getattr(config, "num_channels", 3)
    mean, std = (
        v if isinstance(v, list | tuple) else [v] * channels
        for v in (processor.image_mean, processor.image_std)
    )
    return resize, crop, tuple(mean), tuple(std), type(processor).__name__


def _resized(shape: torch.Size, resize: Side | int) -> Side:
    """The size an image of ``shape`` is resized to: ``resize``, or its shorter side to ``resize``."""
    if isinstance(resize, tuple):
        return resize
    height, width = shape
    scale = resize / min(height, width)
    return max(resize, int(height * scale)), max(resize, int(width * scale))


def _centre_crop(images: torch.Tensor, size: Side) -> torch.Tensor:
    height, width = size
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def _image_processor(weights: str | Path) -> Any:
    """The image processor saved beside the weights (the cache first, a download unless offline or a
    folder), or ``None`` when there is none."""
    AutoImageProcessor = _transformers().AutoImageProcessor
    local = Path(str(weights)).expanduser().exists()
    for local_only in [True] if local or _offline() else [True, False]:
        try:
            return AutoImageProcessor.from_pretrained(str(weights), local_files_only=local_only)
        except (OSError, ValueError):
            continue
    logger.warning(
        "%s has no image processor config (preprocessor_config.json): the classifier's input is the model "
        "config's image_size with the ImageNet mean and std",
        weights,
    )
    return None


def load_hub_classifier(weights: str | Path = IMAGENET_CLASSIFIER_ID) -> HubClassifierLogits:
    """A transformers image classifier's logits from a folder saved with ``save_pretrained`` or a hub id
    (default :data:`IMAGENET_CLASSIFIER_ID`), with the image processor saved beside it."""
    AutoModel = _transformers().AutoModelForImageClassification
    model = load_hub_model(AutoModel, weights, "classifier", IMAGENET_CLASSIFIER_ID, option="--classifier")
    logger.info("image classifier weights from %s", weights)
    return HubClassifierLogits(model, _image_processor(weights), weights)
