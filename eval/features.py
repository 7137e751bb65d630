"""Feature extractors and the features step (features → statistics → scores).

An extractor maps images ``(B, C, H, W)`` in ``[0, 1]`` to vectors ``(B, d)``. Each has a ``name`` and
a ``preprocessing`` name; both go into every report and into the cache key. Resizing happens on the
extractor's device, batched, with bicubic antialiasing (the "clean" resize of clean-fid, which matches
PIL's bicubic filter).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .sources import ImageSource, open_source
from .statistics import FeatureSet, FeatureStatistics, cache_key

logger = logging.getLogger(__name__)

EXTRACTORS = ("inception", "digits", "mnist", "pixels")

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "ModuleFeatures",
    "clean_resize",
    "compute_features",
    "default_device",
    "load_extractor",
]


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def clean_resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing, batched (PIL's bicubic filter; clean-fid's "clean" resize).

    Args:
        images: ``(B, C, H, W)`` float.
        size: output side or ``(height, width)``.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey ↔ RGB: repeat a grey channel, or average RGB to grey (ITU-R 601 luma)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] == 3 and channels == 1:
        luma = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * luma).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images in [0, 1]) → (B, dim)`` = ``embed(preprocess(images))``.

    Attributes:
        name: the extractor's name in reports and cache keys (includes which weights it uses).
        preprocessing: the name of what :meth:`preprocess` does.
        dim: feature width.
    """

    name: str = "features"
    preprocessing: str = "identity"
    dim: int = 0

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(images)).flatten(1)


class ModuleFeatures(FeatureExtractor):
    """Any ``nn.Module`` as a feature extractor; its output is flattened to ``(B, d)``.

    Args:
        module: maps preprocessed images to features.
        size: resize images to this side first (clean resize); ``None`` keeps them.
        channels: convert images to this many channels first; ``None`` keeps them.
        value_range: map ``[0, 1]`` pixel values to this range before the module.
        name: name for reports and the cache; defaults to the class name plus a hash of the weights, so
            that two different modules never share cache entries.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        size: int | None = None,
        channels: int | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str | None = None,
    ):
        super().__init__()
        self.module = module.eval()
        self.size, self.channels, self.value_range = size, channels, value_range
        self.name = name or f"{type(module).__name__}-{_weights_hash(module)}"
        parts = []
        if channels is not None:
            parts.append(f"{channels} channels")
        if size is not None:
            parts.append(f"bicubic-antialias resize to {size}")
        if value_range != (0.0, 1.0):
            parts.append(f"values to [{value_range[0]:g}, {value_range[1]:g}]")
        self.preprocessing = ", ".join(parts) or "identity"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels is not None:
            images = to_channels(images, self.channels)
        if self.size is not None:
            images = clean_resize(images, self.size).clamp(0.0, 1.0)
        low, high = self.value_range
        return images * (high - low) + low

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _weights_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def load_extractor(name: str, device: torch.device | str | None = None) -> FeatureExtractor:
    """A named feature extractor, on ``device`` (default: CUDA when present).

    Args:
        name: ``"inception"`` (FID Inception-v3, 2048-d pool features, 299×299 clean resize),
            ``"digits"`` (the 8×8 digit classifier's 64-d features), ``"mnist"`` (the 28×28 one),
            ``"pixels"`` (raw pixels, flattened).
    """
    device = torch.device(device) if device is not None else default_device()
    if name == "inception":
        from .inception import load_inception

        extractor: FeatureExtractor = load_inception()
    elif name in ("digits", "mnist"):
        from .classifier import DigitFeatures, load_digit_classifier

        extractor = DigitFeatures(load_digit_classifier(name))
    elif name == "pixels":
        extractor = ModuleFeatures(nn.Flatten(), name="pixels")
    else:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")
    return extractor.to(device).eval()


@torch.no_grad()
def compute_features(
    source: ImageSource | str | Path | torch.Tensor | np.ndarray,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of every image of ``source``, one extractor pass per image, with streamed statistics.

    Args:
        source: anything :func:`~atomgen.eval.sources.open_source` accepts.
        extractor: the feature extractor (already on its device).
        batch_size: images per forward pass.
        num_workers: data-loading processes for folders of image files.
        cache_dir: if given, features are read from / written to ``cache_dir/<extractor>-<key>.npz``, the
            key hashing the extractor name, the preprocessing name and the images' content.
        progress: show a progress bar.
    """
    source = open_source(source)
    fingerprint = source.fingerprint() if cache_dir is not None else ""
    path = None
    if cache_dir is not None:
        key = cache_key(extractor.name, extractor.preprocessing, fingerprint)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor.name)
        path = Path(cache_dir) / f"{safe}-{key}.npz"
        if path.is_file():
            logger.info("features of %s from the cache %s", source.name, path)
            return FeatureSet.load(path)
    device = module_device(extractor)
    chunks, stats = [], FeatureStatistics()
    bar = tqdm(total=len(source), desc=f"{extractor.name} features", unit="img", disable=not progress)
    for batch in source.batches(batch_size, num_workers):
        features = extractor(batch.to(device)).to(torch.float32)
        if not torch.isfinite(features).all():
            raise FloatingPointError(f"{extractor.name} gave non-finite features on {source.name}")
        chunk = features.cpu().numpy()
        chunks.append(chunk)
        stats.update(chunk)
        bar.update(len(batch))
    bar.close()
    result = FeatureSet(
        features=np.concatenate(chunks),
        extractor=extractor.name,
        preprocessing=extractor.preprocessing,
        fingerprint=fingerprint,
        source=source.name,
        _statistics=stats.compute() if stats.count >= 2 else None,
    )
    if path is not None:
        result.save(path)
        logger.info("cached features of %s in %s", source.name, path)
    return result
