"""Feature-space atom guidance (a variant of method.md §7): :func:`guide_features`.

Latent-space atom guidance (:func:`~atomgen.pipelines.guide`) differentiates the path ``z_t → site`` and
corrects the noise prediction. This variant acts on the site's activations themselves: inside the forward
pass, the activations ``h`` of each guided sample ``A`` take one normalised step down the gradient of the
atom energy,

    h_A ← h_A − γ(t) · ‖h_A‖ · g_A / ‖g_A‖,        g = ∇_h E(h),   E = Σ_A e_A,

and the rest of the network runs on the moved activations. Only the separation module is differentiated
(``h`` is a leaf), so a guided step costs about a plain step, and ``γ`` is a fraction of the activation
norm, which means the same at any site and in any model.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import torch
from diffusers import DiffusionPipeline

from atomgen.hooks import pick_features, resolve_site
from atomgen.separation import AtomSeparation

from .denoiser_hook import DEFAULT_INTERVAL, DenoiserCall, DenoiserHook, check_interval
from .energy_guidance import row_norm
from .guidance import choose_site_and_separation, separation_for

logger = logging.getLogger(__name__)

# The training-free module's particle grid: the pair energy costs O((B·n)²), and at n = 64 (an 8×8 mid
# block) it costs half a UNet forward; a 4×4 grid (n = 16) is 13× cheaper and keeps a guided step near a
# plain one (bench/guidance.py). The pooled gradient moves each 2×2 block of the site together.
FEATURE_GRID = 4


class FeatureGuidance(DenoiserHook):
    """Feature-space atom guidance; what :func:`guide_features` returns. See :func:`guide_features`.

    Attributes:
        site: the dotted module path of the denoiser whose activations are moved.
        separation: the separation module, or ``None`` until the first guided call builds a
            training-free one (``learn_roles=False``, a grid of at most :data:`FEATURE_GRID`²
            particles) for the site's width.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        strength: float,
        interval: tuple[float, float] = DEFAULT_INTERVAL,
        site: str | None = None,
        separation: AtomSeparation | None = None,
    ):
        if not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        self.strength = float(strength)
        self.interval = check_interval(interval)
        self.site, self.separation = site, separation
        self._site_hook: torch.utils.hooks.RemovableHandle | None = None
        super().__init__(pipe)

    def setup(self) -> None:
        self.site, self.separation = choose_site_and_separation(
            self.pipe, self.denoiser, self.site, self.separation
        )
        self._site_module = resolve_site(self.denoiser, self.site)

    def is_enabled(self) -> bool:
        return self.strength != 0.0

    def before_forward(self, call: DenoiserCall) -> bool:
        low, high = self.interval
        on = (call.fraction >= low) & (call.fraction <= high)
        strength = self.strength * on[call.guided].double()
        if not strength.any():
            return False
        call.strength = strength
        self._site_hook = self._site_module.register_forward_hook(
            lambda module, inputs, output: self._at_site(call, output)
        )
        return True

    def _at_site(self, call: DenoiserCall, output: Any) -> Any:
        self._site_hook.remove()
        self._site_hook = None
        features = pick_features(output, self.site, self._site_module)
        rows = features.shape[0]
        if rows != call.sample.shape[0]:
            raise RuntimeError(
                f"site {self.site!r} has {rows} rows for {call.sample.shape[0]} latents; feature guidance "
                "needs a site whose activations keep the batch dimension first"
            )
        # only the conditional half moves; the unconditional half stays as it is
        moved = call.with_guided(features, self.move(features[call.guided], call.strength))
        return _replace_tensor(output, features, moved)

    def move(self, h: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """``h_A − γ_A ‖h_A‖ g_A / ‖g_A‖`` for every row ``A`` of ``h``, ``g = ∇_h Σ_A e_A``."""
        self.separation = separation_for(self.separation, h, self.site, max_grid=FEATURE_GRID)
        with torch.enable_grad():  # h is a leaf: only the separation module is differentiated
            leaf = h.detach().requires_grad_()
            try:
                atoms = self.separation(leaf)
            except (ValueError, FloatingPointError) as error:
                raise type(error)(f"feature guidance at site {self.site!r}: {error}") from None
            (grad,) = torch.autograd.grad(atoms.energy.sum(), leaf)
        grad = grad.to(h.dtype)
        direction = grad / row_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
        gamma = strength.to(h.device, h.dtype).view(-1, *([1] * (h.ndim - 1)))
        return h - gamma * row_norm(h) * direction

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        if self._site_hook is not None:  # the forward pass raised, or never reached the site
            self._site_hook.remove()
            self._site_hook = None
            if output is not None:
                raise RuntimeError(
                    f"the denoiser's forward pass never reached site {self.site!r}; choose a module it "
                    "calls, e.g. 'mid_block'"
                )
        return None

    def __repr__(self) -> str:
        return f"FeatureGuidance(site={self.site!r}, strength={self.strength}, interval={self.interval})"


def guide_features(
    pipe: DiffusionPipeline,
    strength: float,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    site: str | None = None,
    separation: AtomSeparation | None = None,
) -> FeatureGuidance:
    r"""Feature-space atom guidance: move the site activations of a batch apart while it is sampled.

    At every denoiser call with ``τ`` inside ``interval`` (as for :func:`~atomgen.pipelines.guide`), the
    activations ``h`` at
    ``site`` of each guided sample ``A`` are moved down the gradient of the atom energy, normalised per
    atom so that ``γ`` is a fraction of the activation norm:

        h_A ← h_A − γ(t) · ‖h_A‖ · g_A / ‖g_A‖,        g = ∇_h E(h),   E = Σ_A e_A = B · L_sep

    and the rest of the network computes the prediction from the moved activations. ``g`` is taken with
    ``h`` as a leaf (no backward pass into the denoiser, nothing to ``z_t``), so a guided step costs
    about a plain step. Under classifier-free guidance only the conditional half's activations are
    moved (the energy is that half's); the unconditional half is left as it is, so the guided
    prediction ``ε_u + w (ε_c − ε_u)`` moves by ``w`` times the change of ``ε_c``.

    Args:
        pipe: any diffusers pipeline that calls a ``unet`` (or ``transformer``) with a variance-preserving
            or flow-matching scheduler, like :func:`~atomgen.pipelines.guide`.
        strength: ``γ``, the step as a fraction of ``‖h_A‖``; 0 gives outputs identical to the stock
            pipeline's, a negative value pulls the samples together. Values around 0.05–0.5 act without
            breaking untrained test UNets.
        interval: ``(t_lo, t_hi)`` in ``[0, 1]``, where guidance is on (default: the noisier 60 %).
        site: dotted module path of the denoiser whose (first) output tensor is moved, e.g.
            ``"mid_block"``; chosen as for :func:`~atomgen.pipelines.guide`. At a UNet down block the
            skip connection that carries the same tensor moves with it.
        separation: the :class:`~atomgen.AtomSeparation`; default as for :func:`~atomgen.pipelines.guide`
            (the pipeline's trained one at its site, else a training-free ``learn_roles=False`` one,
            here pooled to a :data:`FEATURE_GRID` × :data:`FEATURE_GRID` particle grid for speed).

    Returns:
        A :class:`FeatureGuidance` handle: ``.remove()`` (or leaving a ``with`` block) restores the stock
        pipeline.

    Raises:
        TypeError: the pipeline has no supported denoiser or scheduler.
        ValueError: a bad option, an unknown site, or (at sampling) a batch of one.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import guide_features
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with guide_features(pipe, strength=0.2) as handle:
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> handle, images.shape
        (FeatureGuidance(site='mid_block', strength=0.2, interval=(0.4, 1.0)), torch.Size([4, 1, 8, 8]))
    """
    return FeatureGuidance(pipe, strength=strength, interval=interval, site=site, separation=separation)


def _replace_tensor(output: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    """``output`` with every occurrence of the tensor ``old`` (by identity) replaced by ``new``: a tensor,
    tuples and lists (a UNet down block returns its output again among its skip connections), or an
    object's ``.sample``."""
    if output is old:
        return new
    if isinstance(output, (tuple, list)):
        return type(output)(_replace_tensor(item, old, new) for item in output)
    if getattr(output, "sample", None) is old:
        output.sample = new
    return output


__all__ = ["FeatureGuidance", "guide_features"]
