"""Sparse, hard-core atom guidance: repel only the pairs of samples closer than a radius.

Atom guidance's energy couples every pair of a group. SPELL (Kirchhof et al., 2024) repels a sample
only from those others that lie within a radius of it, so samples that are already apart are left
exactly as they were. :class:`SparseAtomGuidance` puts that hard-core energy on the site activations,

    E = ½ Σ_{A ≠ B, same group} max(0, r − d_AB)²,        d_AB = ‖h_A − h_B‖ / h̄,

with ``h̄`` the mean norm of the group's activations (so ``r`` is scale-free), and corrects the
prediction by its gradient for ``z_t`` exactly as :class:`~.atom_guidance.AtomGuidance` does. Its
gradient on ``h_A`` is SPELL's shift, ``−Σ_B max(0, r − d_AB) (h_A − h_B) / d_AB`` (up to ``h̄``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline

from .atom_guidance import AtomGuidance
from .noise import DEFAULT_ACTIVE_RANGE


class SparseAtomGuidance(AtomGuidance):
    r"""Atom guidance with a hard-core energy: only pairs closer than ``radius`` repel.

    Args:
        pipe: as for :class:`~atomgen.pipelines.AtomGuidance`.
        atom_scale: ``γ``; 0 gives the stock pipeline.
        radius: ``r``, in units of the group's mean activation norm: pairs farther apart than that are
            not touched (a sample with no neighbour within ``r`` gets no correction).
        active_range, site, normalize, groups: as for :class:`~atomgen.pipelines.AtomGuidance`.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import SparseAtomGuidance
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with SparseAtomGuidance(pipe, atom_scale=0.2, radius=0.5, normalize=True) as handle:
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> handle
        SparseAtomGuidance(site='mid_block', atom_scale=0.2, radius=0.5, active_range=(0.4, 1.0), normalize=True)
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        atom_scale: float | None = None,
        radius: float = 0.5,
        active_range: tuple[float, float] = DEFAULT_ACTIVE_RANGE,
        site: str | None = None,
        normalize: bool = False,
        groups: Sequence[int] | torch.Tensor | None = None,
    ):
        if not isinstance(radius, numbers.Real) or not math.isfinite(radius) or radius <= 0:
            raise ValueError(
                f"radius must be a positive number (a fraction of the mean activation norm), got {radius!r}"
            )
        self.radius = float(radius)
        super().__init__(pipe, atom_scale, active_range, site=site, normalize=normalize, groups=groups)

    def energy(self, features: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        flat = features.flatten(1).float()
        groups = torch.zeros(len(flat), dtype=torch.long) if groups is None else groups
        total = flat.new_zeros(())
        for group in torch.unique(groups):
            rows = flat[groups.to(flat.device) == group]
            scale = rows.norm(dim=1).mean().detach().clamp_min(torch.finfo(rows.dtype).tiny)
            # the distances of pairs i < j, with no square root at 0 (its gradient is undefined)
            i, j = torch.triu_indices(len(rows), len(rows), offset=1, device=rows.device)
            squared = (rows[i] - rows[j]).square().sum(dim=1)
            distance = squared.clamp_min(1e-24).sqrt() / scale
            total = total + 0.5 * torch.relu(self.radius - distance).square().sum()
        return total

    def __repr__(self) -> str:
        options = f"atom_scale={self.scale}, radius={self.radius}, active_range={self.active_range}"
        options += ", normalize=True" if self.normalize else ""
        return f"SparseAtomGuidance(site={self.site!r}, {options})"


__all__ = ["SparseAtomGuidance"]
