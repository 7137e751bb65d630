"""Training-free atom guidance at sampling time (method.md §7): :func:`guide`.

``guide(pipe, ...)`` installs on the pipeline's denoiser with the
:class:`~atomgen.pipelines.denoiser_hook.DenoiserHook` shared with Particle Guidance and CADS, so it works
in any diffusers pipeline that calls a UNet or a transformer denoiser: ``DDPMPipeline``,
``DDIMPipeline``, the Atom pipelines, ``StableDiffusionPipeline`` with classifier-free guidance,
``DiTPipeline``, and the flow-matching pipelines (``StableDiffusion3Pipeline``, ``FluxPipeline``).
``handle.remove()`` gives back the stock pipeline.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import nn

from atomgen.hooks import pick_features, resolve_site
from atomgen.separation import AtomSeparation

from .denoiser_hook import DEFAULT_INTERVAL, DenoiserCall
from .energy_guidance import EnergyGuidance

logger = logging.getLogger(__name__)

# The training-free module's kernel: the guidance strengths were measured with it (bench/sweep.py,
# stage 4), so it stays fixed when AtomSeparation's training default changes.
GUIDANCE_KERNEL = "coulomb"


# --- Atom guidance ------------------------------------------------------------------------------


class AtomGuidance(EnergyGuidance):
    """Training-free atom guidance (method.md §7); what :func:`guide` returns. See :func:`guide`.

    Attributes:
        site: the dotted module path of the denoiser whose activations are separated.
        separation: the separation module, or ``None`` until the first guided call builds a
            training-free one (``learn_roles=False``) for the site's width.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        strength: float,
        interval: tuple[float, float] = DEFAULT_INTERVAL,
        site: str | None = None,
        separation: AtomSeparation | None = None,
        normalize: bool = False,
    ):
        self.site, self.separation = site, separation
        self._site_hook: torch.utils.hooks.RemovableHandle | None = None
        self._grad_enabled = False
        super().__init__(pipe, strength, interval, normalize=normalize)

    def setup(self) -> None:
        self.site, self.separation = choose_site_and_separation(
            self.pipe, self.denoiser, self.site, self.separation
        )
        self._site_module = resolve_site(self.denoiser, self.site)

    def prepare_energy(self, call: DenoiserCall) -> None:
        # One forward pass serves both the prediction and the gradient: it runs with gradient for
        # z_t up to the site, where the hook computes ∇_{z_t} E and switches gradient off again for
        # the rest of the network. Only the path z_t → site is differentiated.
        call.replace(call.sample_name, call.sample.detach().requires_grad_())
        self._grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        self._site_hook = self._site_module.register_forward_hook(
            lambda module, inputs, output: self._at_site(call, output)
        )

    def _at_site(self, call: DenoiserCall, output: Any) -> None:
        self._site_hook.remove()
        self._site_hook = None
        try:
            features = pick_features(output, self.site, self._site_module)[call.guided]
            self.separation = separation = separation_for(self.separation, features, self.site)
            try:
                atoms = separation(features)
            except (ValueError, FloatingPointError) as error:
                raise type(error)(f"atom guidance at site {self.site!r}: {error}") from None
            energy = atoms.energy.sum()  # Σ_A e_A = B · L_sep: γ means the same at any batch size
            grad = None
            if energy.requires_grad:
                (grad,) = torch.autograd.grad(energy, call.sample, allow_unused=True)
            if grad is None:
                raise RuntimeError(f"the activations at site {self.site!r} do not depend on the latents z_t")
        finally:  # the rest of the forward pass runs in the caller's grad mode again
            torch.set_grad_enabled(self._grad_enabled)
        call.energy_grad = grad[call.guided]

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        if self._site_hook is not None:  # the forward pass raised, or never reached the site
            self._site_hook.remove()
            self._site_hook = None
            torch.set_grad_enabled(self._grad_enabled)
            if output is not None:
                raise RuntimeError(
                    f"the denoiser's forward pass never reached site {self.site!r}; choose a module it "
                    "calls, e.g. 'mid_block'"
                )
        return super().after_forward(call, output)

    def __repr__(self) -> str:
        options = f"strength={self.strength}, interval={self.interval}"
        options += ", normalize=True" if self.normalize else ""
        return f"AtomGuidance(site={self.site!r}, {options})"


def guide(
    pipe: DiffusionPipeline,
    strength: float,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    site: str | None = None,
    separation: AtomSeparation | None = None,
    normalize: bool = False,
) -> AtomGuidance:
    r"""Training-free atom guidance: push the samples of a batch apart while they are sampled.

    At every denoiser call with ``τ`` inside ``interval`` (``τ = t / (T − 1)``, or ``σ`` under flow
    matching; 1 = pure noise), the site's activations are
    captured with gradient for the latents ``z_t``, the atom separation energy ``E = B · L_sep`` of the
    batch is computed, and the model output is corrected, ``ε̂ ← ε̂ + strength · σ_t · ∇_{z_t} E``
    (method.md §7; converted for v- and sample-prediction; under flow matching the velocity,
    ``v̂ ← v̂ + strength · σ · ∇_{z_σ} E``, derived in :class:`~atomgen.pipelines.EnergyGuidance`). Only
    the path ``z_t → site`` is differentiated, within the pipeline's own forward pass. Under
    classifier-free guidance the conditional half is guided and both halves get the same correction.
    At a dual-stream transformer block (Stable Diffusion 3's joint blocks, Flux's blocks) only the
    image tokens are separated, not the text tokens; token sequences are pooled to at most 8 × 8.

    Args:
        pipe: any diffusers pipeline that calls a ``unet`` (or ``transformer``) with a variance-preserving
            or flow-matching scheduler: ``DDPMPipeline``, ``DDIMPipeline``, ``StableDiffusionPipeline``,
            the Atom pipelines, ``DiTPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline``.
        strength: ``γ``. 0 gives outputs identical to the stock pipeline; larger values separate more,
            and a negative value pulls samples together. ``∇_{z_t} E`` is not normalised, so the useful
            range depends on the model and the site: sweep it. On the 8×8 digits DDPM of
            ``bench/guidance.py`` 2–10 raise diversity at little cost in precision and 20 already
            breaks the samples; untrained test UNets take tens to hundreds. With ``normalize=True`` it
            is a fraction of the noise prediction's norm instead (below), which transfers.
        interval: ``(t_lo, t_hi)`` in ``[0, 1]``, where guidance is on (default: the noisier 60 %).
        site: dotted module path of the denoiser, e.g. ``"mid_block"`` or ``"down_blocks.1"``. Default:
            the site of the pipeline's trained ``separation`` (Atom pipelines), else ``"mid_block"``, or
            the middle ``transformer_blocks`` entry of a transformer.
        separation: the :class:`~atomgen.AtomSeparation` to use. Default: the pipeline's trained
            ``separation`` component at its own site, else a training-free one
            (``learn_roles=False``: every particle a proton) built for the site's width.
        normalize: when ``True``, the correction of each sample is ``Δε_A = γ(t) ‖ε̂_A‖ g_A / ‖g_A‖``
            (``g_A = ∇_{z_t,A} E``, ``ε̂_A`` its noise prediction; under classifier-free guidance the
            conditional half's), so that ``γ`` is a fraction of ``‖ε̂‖`` and one value transfers across
            models and sites; see :class:`~atomgen.pipelines.EnergyGuidance`. ``False`` (default) is the
            unnormalised formula above.

    Returns:
        An :class:`AtomGuidance` handle: ``.remove()`` (or leaving a ``with`` block) restores the stock
        pipeline.

    Raises:
        TypeError: the pipeline has no supported denoiser or scheduler.
        ValueError: a bad option, an unknown site, or (at sampling) a batch of one.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import guide
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with guide(pipe, strength=2.0, interval=(0.4, 1.0)) as handle:
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> handle, images.shape
        (AtomGuidance(site='mid_block', strength=2.0, interval=(0.4, 1.0)), torch.Size([4, 1, 8, 8]))
    """
    return AtomGuidance(
        pipe, strength=strength, interval=interval, site=site, separation=separation, normalize=normalize
    )


# --- Choosing the site and the separation module (shared with feature_guidance) -------------------


def choose_site_and_separation(
    pipe: Any, denoiser: nn.Module, site: str | None, separation: AtomSeparation | None
) -> tuple[str, AtomSeparation | None]:
    """The site to guide at, and the pipeline's trained separation when it belongs to that site."""
    config = getattr(pipe, "config", {})
    trained, trained_site = getattr(pipe, "separation", None), config.get("separation_site")
    if site is None:
        site = trained_site or _default_site(denoiser)
    if separation is not None:
        if not isinstance(separation, AtomSeparation):
            raise TypeError(f"separation must be an AtomSeparation, got {type(separation).__name__}")
        return site, separation
    if isinstance(trained, AtomSeparation) and site == (trained_site or site):
        return site, trained
    if isinstance(trained, AtomSeparation):
        logger.info(
            "the pipeline's separation was trained at %r; guiding at %r with a training-free one",
            trained_site,
            site,
        )
    return site, None


def separation_for(
    separation: AtomSeparation | None, features: torch.Tensor, site: str, max_grid: int = 8
) -> AtomSeparation:
    """``separation`` on the features' device; when ``None``, a training-free one for their width
    (``learn_roles=False``, :data:`GUIDANCE_KERNEL`, feature maps pooled to at most ``max_grid`` ×
    ``max_grid`` particles), built without moving the sampler's RNG."""
    if separation is None:
        width = features.shape[1] if features.ndim == 4 else features.shape[-1]
        with torch.random.fork_rng(devices=[]):  # building it must not move the sampler's RNG
            separation = AtomSeparation(
                dim=width, learn_roles=False, kernel=GUIDANCE_KERNEL, max_grid=max_grid
            )
        logger.info(
            "guidance at %r: training-free AtomSeparation(dim=%d, max_grid=%d)", site, width, max_grid
        )
    if separation.device != features.device:
        separation.to(features.device)
    return separation


def _default_site(denoiser: nn.Module) -> str:
    if getattr(denoiser, "mid_block", None) is not None:
        return "mid_block"
    blocks = getattr(denoiser, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        return f"transformer_blocks.{len(blocks) // 2}"
    raise ValueError(
        f"{type(denoiser).__name__} has no mid_block or transformer_blocks: pass site=, one of "
        f"{[name for name, _ in denoiser.named_children()]}"
    )


__all__ = ["AtomGuidance", "guide"]
