"""What the Atom UNet pipelines share: components, loading, latents, guidance, callbacks, outputs."""

from __future__ import annotations

import contextlib
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

from .denoiser_hook import DEFAULT_INTERVAL
from .guidance import guide

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
SITE_FILE = "site.json"  # beside an exported separation module: the dotted path it was trained at
# callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict, as in diffusers' pipelines
StepEndCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]
    | PipelineCallback
    | MultiPipelineCallbacks
)


class AtomUNetPipeline(DiffusionPipeline):
    """Base of the Atom pipelines: an unconditional or class-conditional ``UNet2DModel`` (or, in
    :class:`AtomClassConditionalPipeline`, a ``DiTTransformer2DModel``: :attr:`denoiser` is either), a
    scheduler and an optional trained :class:`AtomSeparation`.

    ``save_pretrained`` writes the separation module as the ``separation`` component, and
    ``from_pretrained`` reloads it (no ``trust_remote_code``: it is a class of the installed ``atomgen``
    package). ``from_pretrained`` also reads the layout ``atomgen train`` writes: a stock
    ``DDPMPipeline`` directory with the separation module in its ``separation/`` subfolder.
    """

    model_cpu_offload_seq = "unet"
    _optional_components: ClassVar[list[str]] = ["separation"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]

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

    # --- steps of __call__ ------------------------------------------------------------------------

    def check_inputs(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested an "
                f"effective batch size of {batch_size}. Make sure the batch size matches the length of "
                "the generators."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; this pipeline offers "
                f"{self._callback_tensor_inputs}"
            )

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

    def guidance(
        self,
        strength: float,
        interval: tuple[float, float] = DEFAULT_INTERVAL,
        site: str | None = None,
    ) -> contextlib.AbstractContextManager:
        """Atom guidance (:func:`~atomgen.pipelines.guide`) for one call; nothing at all when 0."""
        if strength == 0:
            return contextlib.nullcontext()
        return guide(self, strength=strength, interval=interval, site=site)

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

    @staticmethod
    def tensor_inputs(callback_on_step_end: StepEndCallback | None, requested: list[str]) -> list[str]:
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return requested

    def postprocess(
        self, image: torch.Tensor, output_type: str
    ) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
        """``[-1, 1]`` samples → images in ``[0, 1]``, as diffusers' ``DDPMPipeline`` returns them."""
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).numpy()
        return self.numpy_to_pil(image) if output_type == "pil" else image


__all__ = ["OUTPUT_TYPES", "AtomUNetPipeline"]
