"""The image-source interface and images held in memory.

Every source yields float32 batches ``(B, C, H, W)`` with values in ``[0, 1]`` (the one convention of
``atomgen.eval``), knows its length, and has a content *fingerprint* that keys the feature cache.
:mod:`.folders` reads image files, :mod:`.sources` resolves what a user names into a source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["ImageSource", "TensorSource"]


class ImageSource:
    """A finite collection of images read in batches.

    Attributes:
        name: a short description for reports (a path, a dataset name).
        labels: integer class labels ``(N,)`` when the source has them (a dataset's classes, or the
            classes a class-conditional model was asked for), else ``None``.
        prompts: the prompt of each image when the source has them (a sample manifest), else ``None``.
    """

    name: str
    labels: np.ndarray | None = None
    prompts: list[str | None] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Float32 batches ``(B, C, H, W)`` in ``[0, 1]``, in a fixed order."""
        raise NotImplementedError

    def indexed_batches(
        self, batch_size: int, num_workers: int = 0
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """:meth:`batches` with the index of each image in the source (a source that skips unreadable
        files leaves their indices out)."""
        start = 0
        for batch in self.batches(batch_size, num_workers):
            yield batch, np.arange(start, start + len(batch))
            start += len(batch)

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches, from as little decoding as the source allows."""
        return tuple(next(iter(self.batches(1))).shape[1:])

    def notes(self) -> list[str]:
        """What reading the source changed or left out (resized or skipped files), for the report."""
        return []

    def fingerprint(self) -> str:
        """sha256 (hex) of the images' content, independent of batch size."""
        raise NotImplementedError


class TensorSource(ImageSource):
    """Images held in memory.

    Args:
        images: ``(N, C, H, W)`` or ``(N, H, W, C)`` (``channels_last=True``); uint8 in ``[0, 255]`` or
            float in ``value_range``.
        value_range: range of float inputs: ``(0, 1)`` or ``(-1, 1)`` (atomgen's datasets).
        name: description for reports.
        labels: optional class labels ``(N,)``.
        prompts: optional prompt of each image.
        channels_last: the array is ``(N, H, W, C)`` (PIL/diffusers ``output_type="np"`` layout).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str = "tensor",
        labels: torch.Tensor | np.ndarray | None = None,
        prompts: list[str | None] | None = None,
        channels_last: bool = False,
    ):
        images = torch.as_tensor(images)
        if channels_last:
            images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images
        if images.ndim == 3:  # (N, H, W): grey images
            images = images[:, None]
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or (N, H, W); got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)}); "
                "pass channels_last=True for (N, H, W, C) arrays"
            )
        if images.dtype == torch.uint8:
            images = images.to(torch.float32) / 255.0
        elif images.is_floating_point():
            low, high = value_range
            if high <= low:
                raise ValueError(f"value_range must be increasing, got {value_range}")
            images = ((images.to(torch.float32) - low) / (high - low)).clamp(0.0, 1.0)
        else:
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        self.images = images.contiguous()
        self.name = name
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        self.prompts = None if prompts is None else list(prompts)
        if self.prompts is not None and len(self.prompts) != len(self.images):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size]

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
        digest.update(self.images.numpy().tobytes())
        return digest.hexdigest()
