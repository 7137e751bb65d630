"""What the Atom pipelines' denoising loops share: components, loading, the checks of a call, latents,
the scheduler's step options, guidance, callbacks, and post-processing (decoding latents with a VAE).

Each pipeline's ``__call__`` keeps its loop visible in numbered steps, as diffusers' pipelines read; the
steps call the methods here, so the loops of ``AtomDDPMPipeline``, ``AtomDDIMPipeline`` and
``AtomClassConditionalPipeline`` differ only where their sampling does.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from atomgen.separation import AtomSeparation

from .atom_guidance import AtomGuidance
from .hook_utils import renamed

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
SITE_FILE = "site.json"  # beside an exported separation module: the dotted path it was trained at
# callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict, as in diffusers' pipelines
# Atom guidance's call options under the names they had before they were named after the method (as
# diffusers writes pag_scale beside guidance_scale); accepted, with a FutureWarning, for one release.
DEPRECATED_CALL_OPTIONS = {
    "guidance_strength": "atom_scale",
    "guidance_interval": "atom_active_range",
    "guidance_site": "atom_site",
}
StepEndCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]
    | PipelineCallback
    | MultiPipelineCallbacks
)


class AtomUNetPipeline(DiffusionPipeline):
    """Base of the Atom pipelines: an unconditional or class-conditional ``UNet2DModel`` (or, in
    :class:`AtomClassConditionalPipeline`, a ``DiTTransformer2DModel``: :attr:`denoiser` is either), a
    scheduler and an optional trained :class:`AtomSeparation`; a pipeline with a ``vae`` component
    (:attr:`latent_decoder`) samples latents and decodes them.

    ``save_pretrained`` writes the separation module as the ``separation`` component, and
    ``from_pretrained`` reloads it (no ``trust_remote_code``: it is a class of the installed ``atomgen``
    package). ``from_pretrained`` also reads the layout ``atomgen train`` writes: a stock
    ``DDPMPipeline`` directory with the separation module in its ``separation/`` subfolder.
    """

    model_cpu_offload_seq = "unet"
    _optional_components: ClassVar[list[str]] = ["separation"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]
    _call_hints: ClassVar[dict[str, str]] = {}  # what to pass instead of a keyword the call does not take

    def _register(
        self,
        unet: UNet2DModel | None,
        scheduler: Any,
        separation: AtomSeparation | None,
        separation_site: str,
    ) -> None:
        if separation is not None and not isinstance(separation, AtomSeparation):
            raise TypeError(f"separation must be an AtomSeparation or None, got {type(separation).__name__}")
        self.register_modules(unet=unet, scheduler=scheduler, separation=separation)
        self.register_to_config(separation_site=separation_site)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """``DiffusionPipeline.from_pretrained``, which also picks up a ``separation/`` subfolder that
        ``model_index.json`` does not list (the layout of ``atomgen train``)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path) / "separation"
        if pipe.separation is None and "separation" not in kwargs and (folder / "config.json").is_file():
            pipe.register_modules(separation=AtomSeparation.from_pretrained(folder).to(pipe.device))
            site_file = folder / SITE_FILE
            if "separation_site" not in kwargs and site_file.is_file():
                pipe.register_to_config(separation_site=json.loads(site_file.read_text())["site"])
        return pipe

    @property
    def denoiser(self) -> nn.Module:
        """The denoising network: the ``unet``, or the ``transformer`` of a pipeline that holds one."""
        transformer = getattr(self, "transformer", None)
        return self.unet if transformer is None else transformer

    @property
    def latent_decoder(self) -> nn.Module | None:
        """The VAE that decodes the sampled latents into images, or ``None`` for a pixel-space model."""
        return getattr(self, "vae", None)

    # --- steps of __call__ ------------------------------------------------------------------------

    def check_inputs(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        callback_on_step_end: StepEndCallback | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> list[str]:
        """Validate the call's common arguments; returns the tensors the step-end callback asks for."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested an "
                f"effective batch size of {batch_size}. Make sure the batch size matches the length of "
                "the generators."
            )
        allowed = OUTPUT_TYPES + (("latent",) if self.latent_decoder is not None else ())
        if output_type not in allowed:
            detail = (
                " ('latent' needs a VAE; this pipeline samples pixels)" if output_type == "latent" else ""
            )
            raise ValueError(f"output_type must be one of {allowed}{detail}, got {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback_on_step_end.tensor_inputs
        else:
            tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; this pipeline offers "
                f"{self._callback_tensor_inputs}"
            )
        return tensor_inputs

    def prepare_latents(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gaussian noise of the denoiser's sample shape, drawn as diffusers' ``DDPMPipeline`` draws it."""
        denoiser = self.denoiser
        config = denoiser.config
        size = config.sample_size
        shape = (batch_size, config.in_channels, *((size, size) if isinstance(size, int) else size))
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            return latents.to(self._execution_device, denoiser.dtype)
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=denoiser.dtype)

    def prepare_class_labels(
        self, class_labels: torch.Tensor | list[int] | int | None, batch_size: int
    ) -> torch.Tensor | None:
        """``class_labels`` as a ``(batch_size,)`` tensor for a class-conditional UNet, else ``None``."""
        conditional = self.unet.class_embedding is not None
        if class_labels is None:
            if conditional:
                raise ValueError(
                    "this UNet is class-conditional (it has a class embedding): pass class_labels, one "
                    "label per image or one for all"
                )
            return None
        if not conditional:
            raise ValueError("class_labels were given, but this UNet has no class embedding")
        labels = torch.as_tensor(class_labels, device=self._execution_device).long().flatten()
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"class_labels has {labels.numel()} entries for batch_size={batch_size}")
        return labels

    def prepare_extra_step_kwargs(
        self,
        generator: torch.Generator | list[torch.Generator] | None,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
    ) -> dict[str, Any]:
        """The options of ``scheduler.step`` that its signature takes (as diffusers' Stable Diffusion
        pipelines prepare them): ``generator``, and DDIM's ``eta`` and ``use_clipped_model_output``.

        ``eta ≠ 0`` for a scheduler without η is refused rather than dropped: the caller asked for step
        noise that this scheduler cannot add.
        """
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" not in accepted and eta != 0.0:
            raise ValueError(
                f"eta={eta} is DDIM's step noise; {type(self.scheduler).__name__} takes no eta (its steps "
                "are deterministic unless its own config says otherwise): pass eta=0"
            )
        if not 0.0 <= eta <= 1.0:
            logger.warning(
                "`eta` should be between 0 and 1 (inclusive), but received %s. A value of 0 corresponds "
                "to DDIM and 1 corresponds to DDPM. Unexpected results may occur for values outside this "
                "range.",
                eta,
            )
        options = {"generator": generator, "eta": eta, "use_clipped_model_output": use_clipped_model_output}
        return {name: value for name, value in options.items() if name in accepted}

    def check_call_options(
        self,
        atom_scale: float,
        atom_active_range: tuple[float, float],
        atom_site: str | None,
        kwargs: dict[str, Any],
    ) -> tuple[float, tuple[float, float], str | None]:
        """Atom guidance's call options, read from their deprecated names in ``kwargs`` too (with a
        ``FutureWarning``, as diffusers' pipelines pop deprecated arguments from ``**kwargs``); any other
        keyword in ``kwargs`` is an error."""
        unknown = sorted(set(kwargs) - set(DEPRECATED_CALL_OPTIONS))
        if unknown:
            hints = "".join(f"; {self._call_hints[k]}" for k in unknown if k in self._call_hints)
            raise TypeError(
                f"{type(self).__name__}.__call__() got unexpected keyword arguments {unknown}{hints}"
            )
        values = {"atom_scale": atom_scale, "atom_active_range": atom_active_range, "atom_site": atom_site}
        defaults = inspect.signature(type(self).__call__).parameters
        for old, new in DEPRECATED_CALL_OPTIONS.items():
            if old in kwargs:
                values[new] = renamed(
                    type(self).__name__, old, new, kwargs[old], values[new], defaults[new].default
                )
        return values["atom_scale"], values["atom_active_range"], values["atom_site"]

    def atom_guidance(
        self, atom_scale: float, active_range: tuple[float, float], site: str | None
    ) -> contextlib.AbstractContextManager:
        """:class:`~atomgen.pipelines.AtomGuidance` on this pipeline for one call; nothing at all at 0."""
        if atom_scale == 0:
            return contextlib.nullcontext()
        return AtomGuidance(self, atom_scale=atom_scale, active_range=active_range, site=site)

    def step_end(
        self,
        callback_on_step_end: StepEndCallback | None,
        callback_on_step_end_tensor_inputs: list[str],
        step_index: int,
        timestep: torch.Tensor,
        latents: torch.Tensor,
    ) -> torch.Tensor:
        """Run ``callback_on_step_end`` and return the (possibly replaced) latents."""
        if callback_on_step_end is None:
            return latents
        callback_kwargs = {"latents": latents}
        callback_kwargs = {k: callback_kwargs[k] for k in callback_on_step_end_tensor_inputs}
        callback_outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs) or {}
        return callback_outputs.pop("latents", latents)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` from the sampled latents: decoded by the VAE (after undoing its latent
        scaling, :func:`unscale_latents`), or the latents themselves for a pixel-space model."""
        vae = self.latent_decoder
        if vae is None:
            return latents
        return vae.decode(unscale_latents(vae, latents).to(vae.dtype)).sample

    def postprocess(
        self, latents: torch.Tensor, output_type: str
    ) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
        """Sampled latents → images in ``[0, 1]``, as diffusers' ``DDPMPipeline`` (pixels) and
        ``DiTPipeline`` (decoded by the VAE) return them; ``"latent"`` returns the latents as they are."""
        if output_type == "latent":
            return latents
        image = (self.decode_latents(latents) / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()  # float(): NumPy has no bfloat16
        return self.numpy_to_pil(image) if output_type == "pil" else image


def scale_latents(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The VAE's latents ``z`` in the scaled space diffusion models sample: ``(z − shift) · scaling`` (or,
    for a VAE with per-channel statistics, ``(z − mean) · scaling / std``, as diffusers' SDXL does)."""
    mean, std = _channel_statistics(vae, z)
    if mean is not None:
        return (z - mean) * vae.config.scaling_factor / std
    return (z - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor


def unscale_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`scale_latents`: what ``vae.decode`` takes."""
    mean, std = _channel_statistics(vae, latents)
    if mean is not None:
        return latents * std / vae.config.scaling_factor + mean
    return latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)


def _channel_statistics(
    vae: nn.Module, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None, None
    shape = (1, -1) + (1,) * (like.ndim - 2)
    return tuple(torch.tensor(v, device=like.device, dtype=like.dtype).view(shape) for v in (mean, std))


__all__ = ["OUTPUT_TYPES", "AtomUNetPipeline", "scale_latents", "unscale_latents"]
