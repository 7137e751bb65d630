"""Particle Guidance (Corso et al., ICLR 2024), the sampling-time peer of atom guidance (method.md §8).

An RBF kernel on the flattened latents, ``K_ij = exp(−‖z_i − z_j‖² / h)`` with the median heuristic for
``h``, and the gradient of ``Φ = Σ_{i≠j} K_ij`` corrects the noise prediction exactly as atom guidance
does (``ε̂ ← ε̂ + γ σ_t ∇_{z_t} Φ``, through the same :class:`~atomgen.pipelines.energy_guidance.EnergyGuidance`
hook), by default while ``σ_t / α_t ≥ 1``, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline

from .denoiser_hook import DenoiserCall
from .energy_guidance import EnergyGuidance
from .hook_utils import renamed


class ParticleGuidance(EnergyGuidance):
    r"""Particle Guidance with a fixed RBF potential on the latents, installed on a pipeline's denoiser.

    ``h = median_{i≠j} ‖z_i − z_j‖² / log(B + 1)`` (the median heuristic of SVGD, without gradient),
    computed afresh at every call on the guided samples of each group: samples interact only within
    their group (by default the samples that share a prompt or a class label), each group with its own
    bandwidth, as if it were sampled alone.

    Args:
        pipe: any diffusers pipeline that calls a ``unet`` (or ``transformer``) with a variance-preserving
            or flow-matching scheduler, like :class:`~atomgen.pipelines.AtomGuidance`.
        pg_scale: ``γ``; 0 leaves the pipeline's outputs identical to the stock pipeline's.
        active_range: ``(t_lo, t_hi)`` fractions of the trajectory where guidance is on, as for atom
            guidance; ``None`` (default) follows the paper: on while ``σ_t / α_t ≥ 1``.
        normalize: when ``True``, ``γ`` is a fraction of the noise prediction's norm,
            ``Δε = γ ‖ε̂‖ ∇Φ / ‖∇Φ‖`` per sample (see :class:`~atomgen.pipelines.EnergyGuidance`).
        groups: one integer per sample: only samples of one group interact. Default: by conditioning.
        strength, interval: deprecated aliases of ``pg_scale`` and ``active_range``.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import ParticleGuidance
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with ParticleGuidance(pipe, pg_scale=0.5):
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> images.shape
        torch.Size([4, 1, 8, 8])
    """

    scale_name = "pg_scale"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        pg_scale: float | None = None,
        active_range: tuple[float, float] | None = None,
        normalize: bool = False,
        groups: Sequence[int] | torch.Tensor | None = None,
        *,
        strength: float | None = None,
        interval: tuple[float, float] | None = None,
    ):
        pg_scale = renamed("ParticleGuidance", "strength", "pg_scale", strength, pg_scale)
        active_range = renamed("ParticleGuidance", "interval", "active_range", interval, active_range)
        if pg_scale is None:
            raise TypeError("ParticleGuidance needs pg_scale=, the guidance strength γ")
        super().__init__(pipe, pg_scale, active_range, normalize=normalize, groups=groups)

    def is_on(self, call: DenoiserCall) -> torch.Tensor:
        if self.active_range is None:  # the paper's rule: while the noise level σ_t / α_t is at least 1
            return call.sigma >= call.alpha
        return super().is_on(call)

    def where(self) -> str:
        return "while σ_t/α_t ≥ 1" if self.active_range is None else super().where()

    def prepare_energy(self, call: DenoiserCall) -> None:
        # The potential acts on the latents themselves: no pass through the denoiser is needed. Outside
        # inference mode, on a clone: the caller may sample under torch.inference_mode().
        with torch.inference_mode(False), torch.enable_grad():
            latents = call.sample[call.guided].detach().float().clone().requires_grad_()
            flat = latents.flatten(1)
            energy = sum(rbf_potential(flat[call.groups == group]) for group in torch.unique(call.groups))
            (grad,) = torch.autograd.grad(energy, latents)
        self.energy_grad = grad

    def __repr__(self) -> str:
        active = "σ_t/α_t ≥ 1" if self.active_range is None else self.active_range
        normalize = ", normalize=True" if self.normalize else ""
        return f"ParticleGuidance(pg_scale={self.scale}, active_range={active}{normalize})"


def rbf_potential(points: torch.Tensor) -> torch.Tensor:
    """``Φ = Σ_{i≠j} exp(−‖x_i − x_j‖² / h)`` for ``points`` ``(B, D)``, ``h`` by the median heuristic."""
    count = points.shape[0]
    gram = points @ points.T
    squared = gram.diagonal()
    distances = (squared[:, None] + squared[None, :] - 2.0 * gram).clamp_min(0.0)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=points.device)
    bandwidth = distances[off_diagonal].median().detach() / math.log(count + 1)
    kernel = torch.exp(-distances / bandwidth.clamp_min(torch.finfo(points.dtype).tiny))
    return kernel[off_diagonal].sum()


__all__ = ["ParticleGuidance", "rbf_potential"]
