"""Feature-space atom guidance (a variant of method.md §7): :class:`FeatureGuidance`.

Latent-space atom guidance (:class:`~atomgen.pipelines.AtomGuidance`) differentiates the path ``z_t → site`` and
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
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from atomgen import distributed
from atomgen.hooks import pick_features, resolve_site
from atomgen.separation import AtomSeparation

from .atom_guidance import choose_site_and_separation, separation_for
from .denoiser_hook import DenoiserCall, DenoiserHook
from .energy_guidance import row_norm
from .hook_utils import renamed
from .noise import DEFAULT_ACTIVE_RANGE, check_range

logger = logging.getLogger(__name__)

# The training-free module's particle grid: the pair energy costs O((B·n)²), and at n = 64 (an 8×8 mid
# block) it costs half a UNet forward; a 4×4 grid (n = 16) is 13× cheaper and keeps a guided step near a
# plain one (bench/guidance.py). The pooled gradient moves each 2×2 block of the site together.
FEATURE_GRID = 4


class FeatureGuidance(DenoiserHook):
    r"""Feature-space atom guidance: move the site activations of a batch apart while it is sampled.

    At every denoiser call with ``τ`` inside ``active_range`` (as for
    :class:`~atomgen.pipelines.AtomGuidance`), the activations ``h`` at ``site`` of each guided sample
    ``A`` are moved down the gradient of the atom energy of its group, normalised per atom so that ``γ``
    is a fraction of the activation norm:

        h_A ← h_A − γ(t) · ‖h_A‖ · g_A / ‖g_A‖,        g = ∇_h E(h),   E = Σ_A e_A

    and the rest of the network computes the prediction from the moved activations. ``g`` is taken with
    ``h`` as a leaf (no backward pass into the denoiser, nothing to ``z_t``), so a guided step costs
    about a plain step. Under classifier-free guidance only the conditional half's activations are
    moved (the energy is that half's); the unconditional half is left as it is, so the guided
    prediction ``ε_u + w (ε_c − ε_u)`` moves by ``w`` times the change of ``ε_c``. Samples interact
    only within their group: by default the samples that share a prompt or a class label.

    Args:
        pipe: any diffusers pipeline that calls a ``unet`` (or ``transformer``) with a variance-preserving
            or flow-matching scheduler, like :class:`~atomgen.pipelines.AtomGuidance`.
        feature_scale: ``γ``, the step as a fraction of ``‖h_A‖``; 0 gives outputs identical to the
            stock pipeline's, a negative value pulls the samples together. Values around 0.05–0.5 act
            without breaking untrained test UNets.
        active_range: ``(t_lo, t_hi)`` in ``[0, 1]``, where the guidance is on (default: the noisier
            60 %).
        site: dotted module path of the denoiser whose (first) output tensor is moved, e.g.
            ``"mid_block"``; chosen as for :class:`~atomgen.pipelines.AtomGuidance`. At a UNet down block
            the skip connection that carries the same tensor moves with it. A site whose activations do
            not depend on the latents (``"time_embedding"``) is refused at the first guided call.
        separation: the :class:`~atomgen.AtomSeparation`; default as for
            :class:`~atomgen.pipelines.AtomGuidance` (the pipeline's trained one at its site, else a
            training-free ``learn_roles=False`` one, here pooled to a :data:`FEATURE_GRID` ×
            :data:`FEATURE_GRID` particle grid for speed).
        groups: one integer per sample: only samples of one group interact. Default: by conditioning.
        strength, interval: deprecated aliases of ``feature_scale`` and ``active_range``.

    Raises:
        TypeError: the pipeline has no supported denoiser or scheduler.
        ValueError: a bad option, an unknown site, or (at sampling) a group of one sample.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import FeatureGuidance
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with FeatureGuidance(pipe, feature_scale=0.2) as handle:
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> handle, images.shape
        (FeatureGuidance(site='mid_block', feature_scale=0.2, active_range=(0.4, 1.0)), torch.Size([4, 1, 8, 8]))

    Attributes:
        site: the dotted module path of the denoiser whose activations are moved.
        separation: the separation module, or ``None`` until the first guided call builds a
            training-free one (``learn_roles=False``, a grid of at most :data:`FEATURE_GRID`²
            particles) for the site's width.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        feature_scale: float | None = None,
        active_range: tuple[float, float] = DEFAULT_ACTIVE_RANGE,
        site: str | None = None,
        separation: AtomSeparation | None = None,
        groups: Sequence[int] | torch.Tensor | None = None,
        *,
        strength: float | None = None,
        interval: tuple[float, float] | None = None,
    ):
        feature_scale = renamed("FeatureGuidance", "strength", "feature_scale", strength, feature_scale)
        active_range = renamed(
            "FeatureGuidance", "interval", "active_range", interval, active_range, DEFAULT_ACTIVE_RANGE
        )
        if not isinstance(feature_scale, numbers.Real) or not math.isfinite(feature_scale):
            raise ValueError(f"feature_scale must be a finite number, got {feature_scale!r}")
        self.scale = float(feature_scale)
        self.active_range = check_range(active_range)
        self.site, self.separation = site, separation
        self.gamma: torch.Tensor | None = None
        self._site_hook: torch.utils.hooks.RemovableHandle | None = None
        super().__init__(pipe, groups=groups)

    def setup(self) -> None:
        self.site, self.separation = choose_site_and_separation(
            self.pipe, self.denoiser, self.site, self.separation
        )
        self._site_module = resolve_site(self.denoiser, self.site)

    def is_enabled(self) -> bool:
        return self.scale != 0.0

    def where(self) -> str:
        return f"for τ in active_range={self.active_range}"

    def before_forward(self, call: DenoiserCall) -> bool:
        low, high = self.active_range
        on = (call.fraction >= low) & (call.fraction <= high)
        gamma = self.scale * on[call.guided].double()
        if not gamma.any():
            return False
        self.gamma = gamma
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
        self._check_depends_on_latents(call, features[call.guided])
        # only the conditional half moves; the unconditional half stays as it is
        moved = call.with_guided(features, self.move(features[call.guided], self.gamma, call.groups))
        return _replace_tensor(output, features, moved)

    def _check_depends_on_latents(self, call: DenoiserCall, features: torch.Tensor) -> None:
        """Refuse a site whose activations are equal across a group whose latents differ: they do not
        depend on ``z_t`` (a time or label embedding), and moving them apart would mean nothing."""
        latents = call.sample[call.guided]
        for group in torch.unique(call.groups):
            rows = (call.groups == group).nonzero().flatten()
            first, rest = rows[:1], rows[1:]
            if torch.equal(latents[rest], latents[first].expand_as(latents[rest])):
                continue
            if torch.equal(features[rest], features[first].expand_as(features[rest])):
                raise ValueError(
                    f"the activations at site {self.site!r} are the same for samples whose latents differ: "
                    "they do not depend on the latents z_t (a time or label embedding), so feature "
                    "guidance cannot separate the samples there; choose a site on the path of the "
                    "latents, e.g. 'mid_block'"
                )

    def move(self, h: torch.Tensor, gamma: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``h_A − γ_A ‖h_A‖ g_A / ‖g_A‖`` for every row ``A`` of ``h``, ``g = ∇_h Σ_A e_A`` (pairs within
        a group only). Works under ``torch.inference_mode()``: the gradient is taken outside it."""
        # h is a leaf: only the separation module is differentiated; a clone outside inference mode
        # when the caller samples under it (inference tensors cannot be saved for backward)
        with torch.inference_mode(False), torch.enable_grad():
            self.separation = separation_for(self.separation, h, self.site, max_grid=FEATURE_GRID)
            leaf = h.detach().clone().requires_grad_()
            try:
                with distributed.local():  # this call's samples only, whatever other processes sample
                    atoms = self.separation(leaf, groups=groups)
            except (ValueError, FloatingPointError) as error:
                raise type(error)(f"feature guidance at site {self.site!r}: {error}") from None
            (grad,) = torch.autograd.grad(atoms.energy.sum(), leaf)
        grad = grad.to(h.dtype)
        direction = grad / row_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
        gamma = gamma.to(h.device, h.dtype).view(-1, *([1] * (h.ndim - 1)))
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
        return (
            f"FeatureGuidance(site={self.site!r}, feature_scale={self.scale}, "
            f"active_range={self.active_range})"
        )


def guide_features(pipe: DiffusionPipeline, *args: Any, **kwargs: Any) -> FeatureGuidance:
    """Deprecated: ``FeatureGuidance(pipe, feature_scale=…, active_range=…)``, which it returns.

    ``guide_features(pipe, strength, interval, site, separation)`` keeps its old arguments for one
    release (with ``FutureWarning``\\ s naming the new ones).
    """
    warnings.warn(
        "guide_features(pipe, …) is deprecated and will be removed in the next release; use "
        "FeatureGuidance(pipe, feature_scale=…, active_range=…), a context manager with .remove()",
        FutureWarning,
        stacklevel=2,
    )
    names = ("strength", "interval", "site", "separation")
    if len(args) > len(names):
        raise TypeError(f"guide_features() takes at most {len(names) + 1} positional arguments")
    return FeatureGuidance(pipe, **(kwargs | dict(zip(names, args, strict=False))))


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
