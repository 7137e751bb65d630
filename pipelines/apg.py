"""Adaptive projected guidance (Sadat et al., ICLR 2025) on any CFG pipeline: :class:`APG`.

In x̂_0 space, the guidance update ``Δ = c − u`` (optionally averaged with momentum and clipped to a norm)
is split into its part parallel to the conditional prediction and the part orthogonal to it, and the
parallel part, which oversaturates, is scaled by ``η``:

    N = Δ_⊥ + η Δ_∥,        x̂_0 = c + (w − 1) N

Written into the unconditional half as ``u' = c − N`` (converted back to the model's parameterisation,
an affine map at fixed ``z_t``), the pipeline's own ``u' + w (c − u')`` gives exactly that, at the
pipeline's ``w``. It equals diffusers' ``AdaptiveProjectedGuidance(guidance_scale=w − 1,
use_original_formulation=True, …)`` applied to x̂_0.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from .cfg_edit import CFGEdit
from .denoiser_hook import DenoiserCall
from .noise import from_x0, prediction_type, to_x0


class APG(CFGEdit):
    r"""Adaptive projected guidance, installed on any CFG pipeline.

    Args:
        pipe: a pipeline with classifier-free guidance (see :class:`GuidanceInterval`).
        eta: ``η``, the weight kept of the update parallel to the conditional x̂_0 (1 with no momentum
            and no clipping is CFG; the paper uses 0).
        momentum: ``β`` of the running average ``Δ̄ ← Δ + β Δ̄`` over the steps of one sampling call
            (the paper uses −0.5); ``None``: none.
        norm_threshold: ``r``: the update is scaled to norm at most ``r`` per sample (0: no clipping);
            15 is diffusers' default.

    Example:
        >>> from atomgen.pipelines import APG, AtomClassConditionalPipeline
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, num_class_embeds=11, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomClassConditionalPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with APG(pipe, eta=0.0) as handle:
        ...     images = pipe(class_labels=[1, 2], guidance_scale=3.0, num_inference_steps=4).images
        >>> handle.guided_calls
        4
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        eta: float = 0.0,
        momentum: float | None = None,
        norm_threshold: float = 15.0,
    ):
        for name, value in (("eta", eta), ("norm_threshold", norm_threshold), ("momentum", momentum or 0.0)):
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"APG {name} must be a finite number, got {value!r}")
        if norm_threshold < 0:
            raise ValueError(f"APG norm_threshold must be ≥ 0 (0: no clipping), got {norm_threshold}")
        self.eta, self.momentum, self.norm_threshold = float(eta), momentum, float(norm_threshold)
        self._average: torch.Tensor | None = None
        self._last_fraction = math.inf
        super().__init__(pipe)

    def sampling_ended(self) -> None:
        self._average, self._last_fraction = None, math.inf
        super().sampling_ended()

    def edit(
        self, call: DenoiserCall, cond: torch.Tensor, uncond: torch.Tensor, cond_call: DenoiserCall
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = call.guided if call.doubled else slice(None)
        z_t = call.sample[rows]
        alpha, sigma = (call.per_row(v[rows], z_t) for v in (call.alpha, call.sigma))
        kind = prediction_type(self.pipe.scheduler)
        cond_x0, uncond_x0 = (to_x0(p, z_t, alpha, sigma, kind) for p in (cond, uncond))
        update = self.update(call, cond_x0, cond_x0 - uncond_x0)
        return cond, from_x0(cond_x0 - update, z_t, alpha, sigma, kind)

    def update(self, call: DenoiserCall, cond_x0: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        """``N = Δ_⊥ + η Δ_∥`` per sample, as diffusers' ``normalized_guidance`` computes it."""
        fraction = float(call.fraction.max())
        if fraction > self._last_fraction or (
            self._average is not None and self._average.shape != diff.shape
        ):
            self._average = None  # a new trajectory: the momentum starts again
        self._last_fraction = fraction
        if self.momentum is not None:
            self._average = diff if self._average is None else diff + self.momentum * self._average
            diff = self._average
        dims = list(range(1, diff.ndim))
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        v0, v1 = diff.double(), F.normalize(cond_x0.double(), dim=dims)
        parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
        orthogonal = v0 - parallel
        return orthogonal.to(diff.dtype) + self.eta * parallel.to(diff.dtype)

    def __repr__(self) -> str:
        return f"APG(eta={self.eta}, momentum={self.momentum}, norm_threshold={self.norm_threshold})"


__all__ = ["APG"]
