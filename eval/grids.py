"""PNG grids of images, the one way atomgen writes sample and reconstruction pictures."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from atomgen.io import write_atomic

__all__ = ["image_grid", "save_image_grid"]


def image_grid(images: torch.Tensor, *, nrow: int = 8, cell_side: int = 40) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in ``[0, 1]`` as one RGB grid ``(3, H', W')`` in ``[0, 1]``, white gaps between.

    Args:
        images: one or three channels, values in ``[0, 1]`` (clamped).
        nrow: images per row.
        cell_side: small images are enlarged (nearest neighbour, an integer factor) to about this side,
            so 8×8 digits stay readable; larger images are kept as they are.
    """
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(0, 1)
    factor = max(1, cell_side // max(images.shape[-2:]))
    big = F.interpolate(images, scale_factor=factor, mode="nearest")
    return make_grid(big, nrow=nrow, padding=2, pad_value=1.0)  # make_grid repeats grey to 3 channels


def save_image_grid(path: str | Path, images: torch.Tensor, *, nrow: int = 8, cell_side: int = 40) -> Path:
    """Images ``(N, C, H, W)`` in ``[0, 1]`` as one PNG grid (:func:`image_grid`), written atomically.

    Args:
        path: the PNG to write (folders are created).
        images, nrow, cell_side: as in :func:`image_grid`.
    """
    grid = image_grid(images, nrow=nrow, cell_side=cell_side)
    pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(pixels[..., 0] if images.shape[1] == 1 else pixels)
    write_atomic(path, lambda file: picture.save(file, format="PNG"))
    return Path(path)
