"""Attribution faithfulness (method.md §9) and attribution pictures.

Deletion curve: for fractions f, replace the top-f particles by importance ``s`` of every atom in the
batch with that atom's mean particle, run the separation module again, and measure the relative drop of
each atom's mean distance ``d̄`` to the other atoms (method.md §4, ``d̄_AB``). If importance is faithful,
the important particles are what sets the atoms apart: deleting them first collapses the distances
fastest, and the area under that drop curve beats the one of random deletion orders.

Every atom is masked at once (the batch is degraded evenly). Masking one atom against intact others
would compare it with the others' important particles, which its mean particle need not resemble.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from atomgen import AtomSeparation

logger = logging.getLogger(__name__)

__all__ = ["AttributionFaithfulness", "attribution_faithfulness", "attribution_maps", "save_attribution_grid"]


@dataclass(frozen=True)
class AttributionFaithfulness:
    """Deletion curves by importance and at random, and the areas under them (higher = more drop).

    Attributes:
        fractions: deleted fraction of each atom's particles.
        drop_importance: mean relative drop of d̄ when deleting in order of decreasing importance.
        drop_random: the same for random orders (mean over ``num_random`` orders).
        auc_importance, auc_random: trapezoidal areas under the two curves over the fractions.
        gain: ``auc_importance − auc_random`` (> 0: importance beats random).
    """

    fractions: list[float]
    drop_importance: list[float]
    drop_random: list[float]
    auc_importance: float
    auc_random: float
    gain: float

    def to_dict(self) -> dict:
        return asdict(self)


def _rebuild(
    particles: torch.Tensor, features: torch.Tensor, grid: tuple[int, ...], patch: int
) -> torch.Tensor:
    """Particles ``(B, n, d)`` back into the layout the separation module tokenises (inverse of unfold)."""
    if features.ndim == 4:
        height, width = grid[0] * patch, grid[1] * patch
        return F.fold(particles.transpose(1, 2), (height, width), kernel_size=patch, stride=patch)
    if features.ndim == 3:
        return particles
    return particles[:, 0]


def _mean_distance_to_others(
    separation: AtomSeparation, atoms: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``d̄_A = mean_{B≠A} d̄_AB`` per atom (method.md §4), in one pass."""
    distance = separation(atoms, mask=mask).atom_distance.double()
    count = distance.shape[0]
    off_diagonal = 1.0 - torch.eye(count, dtype=distance.dtype, device=distance.device)
    return (distance * off_diagonal).sum(1) / (count - 1)


@torch.no_grad()
def attribution_faithfulness(
    separation: AtomSeparation,
    features: torch.Tensor,
    *,
    fractions: list[float] | None = None,
    num_random: int = 8,
    seed: int = 0,
    mask: torch.Tensor | None = None,
) -> AttributionFaithfulness:
    """Deletion curves of an :class:`~atomgen.AtomSeparation`'s importances against random deletion.

    Args:
        separation: the (trained) separation module.
        features: a batch of site activations ``(B, C, H, W)``, ``(B, n, d)`` or ``(B, d)``, ``B ≥ 2``.
        fractions: deleted fractions in [0, 1] (default 0, 0.1, …, 1).
        num_random: random deletion orders to average.
        seed: seed of the random orders.
        mask: optional ``(B, n)`` particle mask (masked particles are never deleted).
    """
    if features.shape[0] < 2:
        raise ValueError(
            f"attribution_faithfulness needs at least 2 atoms (samples), got {features.shape[0]}"
        )
    fractions = [round(0.1 * i, 10) for i in range(11)] if fractions is None else sorted(fractions)
    if fractions[0] < 0 or fractions[-1] > 1 or len(fractions) < 2:
        raise ValueError(f"fractions must be at least two values in [0, 1], got {fractions}")
    separation = separation.eval()
    dtype = torch.promote_types(features.dtype, torch.float32)
    features = features.to(dtype)
    particles, valid, grid = separation.tokenize(features, mask)
    patch = separation.config.patch_size
    base = _rebuild(particles, features, grid, patch)  # the (pooled) input as the module sees it
    importance = separation(base, mask=valid).importance
    atoms, n = importance.shape
    counts = valid.sum(1)
    mean_particle = ((particles * valid[..., None]).sum(1) / counts.clamp_min(1)[:, None])[:, None, :]
    reference = _mean_distance_to_others(separation, base, valid)

    def curve(order: torch.Tensor) -> np.ndarray:
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n, device=order.device).expand(atoms, n))
        drops = []
        for fraction in fractions:
            deleted = (rank < torch.round(fraction * counts)[:, None]) & (valid > 0)
            masked = torch.where(deleted[..., None], mean_particle.expand_as(particles), particles)
            distance = _mean_distance_to_others(separation, _rebuild(masked, features, grid, patch), valid)
            drops.append(float(((reference - distance) / reference.clamp_min(1e-12)).mean()))
        return np.array(drops)

    # Valid particles first (by decreasing importance), padding last.
    by_importance = torch.argsort(torch.where(valid > 0, importance, -torch.inf), dim=1, descending=True)
    drop_importance = curve(by_importance)
    generator = torch.Generator().manual_seed(seed)
    random_curves = []
    for _ in range(num_random):
        keys = torch.rand(atoms, n, generator=generator).to(importance.device)
        random_curves.append(
            curve(torch.argsort(torch.where(valid > 0, keys, -torch.inf), 1, descending=True))
        )
    drop_random = np.mean(random_curves, axis=0)
    auc_importance = _area(drop_importance, fractions)
    auc_random = _area(drop_random, fractions)
    return AttributionFaithfulness(
        fractions=list(fractions),
        drop_importance=drop_importance.tolist(),
        drop_random=drop_random.tolist(),
        auc_importance=auc_importance,
        auc_random=auc_random,
        gain=auc_importance - auc_random,
    )


def _area(values: np.ndarray, fractions: list[float]) -> float:
    """Trapezoidal area under ``values`` over ``fractions``."""
    x = np.asarray(fractions, dtype=np.float64)
    return float(((values[1:] + values[:-1]) * np.diff(x)).sum() / 2)


# --- pictures -------------------------------------------------------------------------------------------


def attribution_maps(importance: torch.Tensor, grid: tuple[int, ...], size: tuple[int, int]) -> torch.Tensor:
    """Importances ``(B, n)`` on an ``(H', W')`` particle grid, upsampled bilinearly to ``size``: ``(B, 1, H, W)``."""
    if len(grid) != 2:
        raise ValueError(f"attribution maps need a 2-d particle grid, got {grid} (token or vector sites)")
    maps = importance.detach().float().reshape(-1, 1, *grid)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def _heat(values: torch.Tensor) -> torch.Tensor:
    """A black → red → yellow → white ramp ("hot") of values in [0, 1]: ``(B, 1, H, W)`` → ``(B, 3, H, W)``."""
    return torch.cat(
        [(3 * values).clamp(0, 1), (3 * values - 1).clamp(0, 1), (3 * values - 2).clamp(0, 1)], 1
    )


def save_attribution_grid(
    images: torch.Tensor,
    importance: torch.Tensor,
    grid: tuple[int, ...],
    path: str | Path,
    *,
    alpha: float = 0.6,
    min_side: int = 64,
    nrow: int = 8,
) -> Path:
    """A PNG of each image beside its importance map laid over it.

    Args:
        images: ``(B, C, H, W)`` in [0, 1].
        importance: ``(B, n)`` from :class:`~atomgen.AtomOutput` (``s = 1 − r^neutron``).
        grid: the particle grid ``(H', W')`` (``AtomOutput.grid``).
        path: output PNG.
        alpha: opacity of the heat map.
        min_side: small images are enlarged (nearest neighbour) to at least this side.
        nrow: image/overlay pairs per row.
    """
    from torchvision.utils import save_image

    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, int(np.ceil(min_side / min(images.shape[-2:]))))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    heat = _heat(attribution_maps(importance.cpu(), grid, tuple(images.shape[-2:])))
    overlay = (1 - alpha) * images + alpha * heat
    tiles = torch.stack([images, overlay], 1).flatten(0, 1)  # image, overlay, image, overlay, ...
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tiles, path, nrow=2 * nrow, padding=2, pad_value=1.0)
    return path
