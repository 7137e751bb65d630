"""What every feature extractor shares: the base class, the device helpers and the named preprocessing.

An extractor maps images ``(B, C, H, W)`` in ``[0, 1]`` to vectors ``(B, d)``. Each has a ``name`` and
a ``preprocessing`` name; both go into every report and into the cache key. Resizing happens on the
extractor's device, batched, with bicubic antialiasing (the "clean" resize of clean-fid, which matches
PIL's bicubic filter). The concrete extractors (:mod:`.inception`, :mod:`.classifier`, :mod:`.lpips`)
build on this module; :mod:`.features` picks one by name.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureExtractor",
    "ModuleFeatures",
    "clean_resize",
    "default_device",
    "module_device",
    "to_channels",
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
        fd_name: the report's name of the Fréchet distance on these features (``fd_dinov2`` on DINOv2).
        kid_features: why KID's cubic kernel ``(xᵀy / d + 1)³`` fits these features as they are; ``None``:
            they are rescaled first (see :func:`~atomgen.eval.scores.kid`).
    """

    name: str = "features"
    preprocessing: str = "identity"
    dim: int = 0
    fd_name: str = "fid"
    kid_features: str | None = None

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
