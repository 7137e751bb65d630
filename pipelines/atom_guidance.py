"""Training-free atom guidance at sampling time (method.md §7): :class:`AtomGuidance`.

``AtomGuidance(pipe, atom_scale=...)`` installs on the pipeline's denoiser with the
:class:`~atomgen.pipelines.denoiser_hook.DenoiserHook` shared with Particle Guidance and CADS, so it works
in any diffusers pipeline that calls a UNet or a transformer denoiser: ``DDPMPipeline``,
``DDIMPipeline``, the Atom pipelines, ``StableDiffusionPipeline`` with classifier-free guidance,
``DiTPipeline``, and the flow-matching pipelines (``StableDiffusion3Pipeline``, ``FluxPipeline``).
``handle.remove()`` gives back the stock pipeline. :func:`guide` is its deprecated functional alias.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import nn

from atomgen import distributed
from atomgen.hooks import pick_features, resolve_site
from atomgen.separation import AtomSeparation

from .denoiser_hook import DenoiserCall
from .energy_guidance import EnergyGuidance
from .hook_utils import for_autograd, renamed
from .noise import DEFAULT_ACTIVE_RANGE

logger = logging.getLogger(__name__)

# The training-free module's kernel: the guidance strengths were measured with it (bench/sweep.py,
# stage 4), so it stays fixed when AtomSeparation's training default changes.
GUIDANCE_KERNEL = "coulomb"


# --- Atom guidance ------------------------------------------------------------------------------


class AtomGuidance(EnergyGuidance):
    r"""Training-free atom guidance: push the samples of a batch apart while they are sampled.

    At every denoiser call with ``τ`` inside ``active_range`` (``τ = t / (T − 1)``, or ``σ`` under flow
    matching; 1 = pure noise), the site's activations are captured with gradient for the latents
    ``z_t``, the atom separation energy ``E = Σ_A e_A`` of each group of samples is computed, and the
    model output is corrected, ``ε̂ ← ε̂ + γ · σ_t · ∇_{z_t} E`` (method.md §7; converted for v- and
    sample-prediction; under flow matching the velocity, ``v̂ ← v̂ + γ · σ · ∇_{z_σ} E``, derived in
    :class:`~atomgen.pipelines.EnergyGuidance`). Only the path ``z_t → site`` is differentiated, within
    the pipeline's own forward pass. Under classifier-free guidance the conditional half is guided and
    both halves get the same correction. Samples interact only within their group: by default the
    samples that share a prompt or a class label. At a dual-stream transformer block (Stable Diffusion
    3's joint blocks, Flux's blocks) only the image tokens are separated; token sequences are pooled to
    at most 8 × 8. Under ``torch.inference_mode()`` the gradient is taken in a second, partial pass
    outside inference mode (about one extra half forward pass per guided call).

    Args:
        pipe: any diffusers pipeline that calls a ``unet`` (or ``transformer``) with a variance-preserving
            or flow-matching scheduler: ``DDPMPipeline``, ``DDIMPipeline``, ``StableDiffusionPipeline``,
            the Atom pipelines, ``DiTPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline``.
        atom_scale: ``γ``. 0 gives outputs identical to the stock pipeline; larger values separate more,
            and a negative value pulls samples together. ``∇_{z_t} E`` is not normalised, so the useful
            range depends on the model and the site: sweep it. On the 8×8 digits DDPM of
            ``bench/guidance.py`` 2–10 raise diversity at little cost in precision and 20 already
            breaks the samples; untrained test UNets take tens to hundreds. With ``normalize=True`` it
            is a fraction of the noise prediction's norm instead (below), which transfers.
        active_range: ``(t_lo, t_hi)`` in ``[0, 1]``, where atom guidance is on (default: the noisier
            60 %). Not the guidance interval of classifier-free guidance (:class:`GuidanceInterval`).
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
        groups: one integer per sample: only samples of one group interact. Default: by conditioning.
        strength, interval: deprecated aliases of ``atom_scale`` and ``active_range``.

    Raises:
        TypeError: the pipeline has no supported denoiser or scheduler.
        ValueError: a bad option, an unknown site, or (at sampling) a group of one sample.

    Example:
        >>> import torch
        >>> from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import AtomGuidance
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = DDIMPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with AtomGuidance(pipe, atom_scale=2.0, active_range=(0.4, 1.0)) as handle:
        ...     images = pipe(batch_size=4, num_inference_steps=5, output_type="pt").images
        >>> handle, handle.guided_calls, images.shape
        (AtomGuidance(site='mid_block', atom_scale=2.0, active_range=(0.4, 1.0)), 3, torch.Size([4, 1, 8, 8]))

    Attributes:
        site: the dotted module path of the denoiser whose activations are separated.
        separation: the separation module, or ``None`` until the first guided call builds a
            training-free one (``learn_roles=False``) for the site's width.
    """

    scale_name = "atom_scale"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        atom_scale: float | None = None,
        active_range: tuple[float, float] = DEFAULT_ACTIVE_RANGE,
        site: str | None = None,
        separation: AtomSeparation | None = None,
        normalize: bool = False,
        groups: Sequence[int] | torch.Tensor | None = None,
        *,
        strength: float | None = None,
        interval: tuple[float, float] | None = None,
    ):
        atom_scale = renamed("AtomGuidance", "strength", "atom_scale", strength, atom_scale)
        active_range = renamed(
            "AtomGuidance", "interval", "active_range", interval, active_range, DEFAULT_ACTIVE_RANGE
        )
        if atom_scale is None:
            raise TypeError(
                "AtomGuidance needs atom_scale=, the guidance strength γ (0 leaves sampling as is)"
            )
        self.site, self.separation = site, separation
        self._site_hook: torch.utils.hooks.RemovableHandle | None = None
        self._grad_enabled: bool | None = False
        super().__init__(pipe, atom_scale, active_range, normalize=normalize, groups=groups)

    def setup(self) -> None:
        self.site, self.separation = choose_site_and_separation(
            self.pipe, self.denoiser, self.site, self.separation
        )
        self._site_module = resolve_site(self.denoiser, self.site)

    def prepare_energy(self, call: DenoiserCall) -> None:
        if torch.is_inference_mode_enabled():
            self._gradient_outside_inference_mode(call)
            return
        # One forward pass serves both the prediction and the gradient: it runs with gradient for
        # z_t up to the site, where the hook computes ∇_{z_t} E and switches gradient off again for
        # the rest of the network. Only the path z_t → site is differentiated.
        sample = call.sample
        if sample.requires_grad and sample.is_leaf:  # another latent-gradient method set it up
            self._grad_enabled = None  # ... and gives the caller's grad mode back at its own site
        else:
            call.replace(call.sample_name, sample.detach().requires_grad_())
            self._grad_enabled = torch.is_grad_enabled()
            torch.set_grad_enabled(True)
        self._site_hook = self._site_module.register_forward_hook(
            lambda module, inputs, output: self._at_site(call, output)
        )

    def _gradient_outside_inference_mode(self, call: DenoiserCall) -> None:
        """Inference tensors cannot be differentiated: the gradient comes from a pass of the denoiser up
        to the site on clones of the call's tensors, outside inference mode; the caller's pass then
        runs in inference mode, untouched."""
        with torch.inference_mode(False), torch.enable_grad():
            args, kwargs = for_autograd(call.args), for_autograd(call.kwargs)
            inner = DenoiserCall(**{**vars(call), "args": args, "kwargs": kwargs})
            inner.replace(call.sample_name, inner.sample.detach().clone().requires_grad_())
            self._grad_enabled = True
            self._site_hook = self._site_module.register_forward_hook(
                lambda module, inputs, output: self._at_site(inner, output, stop=True)
            )
            try:  # .forward: without the denoiser's own hooks (ours included)
                self.denoiser.forward(*args, **kwargs)
            except _ReachedSite:
                pass
            finally:
                if self._site_hook is not None:
                    self._site_hook.remove()
                    self._site_hook = None
        if self.energy_grad is None:
            raise RuntimeError(f"the denoiser's forward pass never reached site {self.site!r}")

    def _at_site(self, call: DenoiserCall, output: Any, stop: bool = False) -> None:
        self._site_hook.remove()
        self._site_hook = None
        try:
            # another method's site hook may have switched gradient off already: views taken without
            # it would cut the graph
            with torch.enable_grad():
                features = pick_features(output, self.site, self._site_module)[call.guided]
                energy = self.energy(features, call.groups)
            grad = None
            if energy.requires_grad:  # the graph is kept for another latent-gradient method's site
                (grad,) = torch.autograd.grad(energy, call.sample, allow_unused=True, retain_graph=True)
            if grad is None:
                raise ValueError(
                    f"the activations at site {self.site!r} do not depend on the latents z_t, so atom "
                    "guidance has no gradient there; choose a site on the path of the latents, e.g. "
                    "'mid_block'"
                )
        finally:  # the rest of the forward pass runs in the caller's grad mode again
            if self._grad_enabled is not None:
                torch.set_grad_enabled(self._grad_enabled)
        self.energy_grad = grad[call.guided]
        if stop:
            raise _ReachedSite

    def energy(self, features: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """The energy of the guided rows' site activations, pairs within a group only:
        ``E = Σ_A e_A = B · L_sep``, so that ``γ`` means the same at any batch size."""
        self.separation = separation = separation_for(self.separation, features, self.site)
        try:
            with distributed.local():  # this call's samples only, whatever other processes sample
                atoms = separation(features, groups=groups)
        except (ValueError, FloatingPointError) as error:
            raise type(error)(f"atom guidance at site {self.site!r}: {error}") from None
        return atoms.energy.sum()

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        if self._site_hook is not None:  # the forward pass raised, or never reached the site
            self._site_hook.remove()
            self._site_hook = None
            if self._grad_enabled is not None:
                torch.set_grad_enabled(self._grad_enabled)
            if output is not None:
                raise RuntimeError(
                    f"the denoiser's forward pass never reached site {self.site!r}; choose a module it "
                    "calls, e.g. 'mid_block'"
                )
        return super().after_forward(call, output)

    def __repr__(self) -> str:
        options = f"atom_scale={self.scale}, active_range={self.active_range}"
        options += ", normalize=True" if self.normalize else ""
        return f"AtomGuidance(site={self.site!r}, {options})"


class _ReachedSite(Exception):
    """Ends the partial pass of :meth:`AtomGuidance._gradient_outside_inference_mode` at the site."""


def guide(pipe: DiffusionPipeline, *args: Any, **kwargs: Any) -> AtomGuidance:
    """Deprecated: ``AtomGuidance(pipe, atom_scale=…, active_range=…)``, which it returns.

    ``guide(pipe, strength, interval, site, separation, normalize)`` keeps its old arguments for one
    release (with ``FutureWarning``\\ s naming the new ones).
    """
    warnings.warn(
        "guide(pipe, …) is deprecated and will be removed in the next release; use "
        "AtomGuidance(pipe, atom_scale=…, active_range=…), a context manager with .remove()",
        FutureWarning,
        stacklevel=2,
    )
    names = ("strength", "interval", "site", "separation", "normalize")
    kwargs |= dict(zip(names, args, strict=False))
    if len(args) > len(names):
        raise TypeError(f"guide() takes at most {len(names) + 1} positional arguments")
    return AtomGuidance(pipe, **kwargs)


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


__all__ = ["GUIDANCE_KERNEL", "AtomGuidance", "guide"]
