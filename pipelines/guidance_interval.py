"""The guidance interval (Kynkäänniemi et al., NeurIPS 2024) on any CFG pipeline: :class:`GuidanceInterval`.

Classifier-free guidance only within a part of the sampling steps: outside it the step uses the
conditional prediction alone. Written into the unconditional half (``u' = c``), the pipeline's own
``u + w (c − u)`` gives ``c`` there, exactly. The steps are those of diffusers'
``ClassifierFreeGuidance(start=…, stop=…)``: step ``i`` of ``N`` is guided when
``⌊start · N⌋ ≤ i < ⌊stop · N⌋``.
"""

from __future__ import annotations

import math
import numbers

import torch
from diffusers import DiffusionPipeline

from .cfg_edit import CFGEdit
from .denoiser_hook import DenoiserCall
from .noise import noise_levels


class GuidanceInterval(CFGEdit):
    r"""Classifier-free guidance on a part of the steps only, installed on any CFG pipeline.

    Step ``i`` of the scheduler's ``N`` steps (read off the call's noise level) is guided when
    ``⌊start · N⌋ ≤ i < ⌊stop · N⌋``, as diffusers' ``ClassifierFreeGuidance(start=start, stop=stop)``;
    at the other steps the unconditional prediction is replaced by the conditional one, so the pipeline's
    CFG gives the conditional prediction. ``start=0, stop=1`` leaves the pipeline bit-identical to stock.

    Args:
        pipe: a pipeline with classifier-free guidance: ``StableDiffusionPipeline``, SDXL, SD3, Flux
            with ``true_cfg_scale > 1``, ``DiTPipeline``, :class:`~atomgen.pipelines.AtomClassConditionalPipeline`.
        start: the fraction of the steps, from the noisiest, left unguided (``0 ≤ start < stop``).
        stop: the fraction of the steps after which guidance stops (``≤ 1``).

    Example:
        >>> from atomgen.pipelines import AtomClassConditionalPipeline, GuidanceInterval
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, num_class_embeds=11, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomClassConditionalPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with GuidanceInterval(pipe, start=0.4) as handle:
        ...     images = pipe(class_labels=[1, 2], guidance_scale=3.0, num_inference_steps=5).images
        >>> handle.guided_calls  # steps 0 and 1 of 5 are left unguided
        2
    """

    def __init__(self, pipe: DiffusionPipeline, start: float = 0.0, stop: float = 1.0):
        for name, value in (("start", start), ("stop", stop)):
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"GuidanceInterval {name} must be a finite number, got {value!r}")
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(
                f"GuidanceInterval needs 0 ≤ start < stop ≤ 1 (fractions of the sampling steps, from the "
                f"noisiest); got start={start}, stop={stop}"
            )
        self.start, self.stop = float(start), float(stop)
        super().__init__(pipe)

    def is_enabled(self) -> bool:
        return (self.start, self.stop) != (0.0, 1.0)

    def step_index(self, call: DenoiserCall) -> tuple[int, int]:
        """``(i, N)``: the call's step among the scheduler's current timesteps (nearest noise level)."""
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or not timesteps.numel():
            raise RuntimeError("GuidanceInterval needs the scheduler's timesteps: call it inside sampling")
        levels = noise_levels(self.pipe.scheduler, timesteps)[0]
        index = int((levels - call.fraction[0]).abs().argmin())
        return index, timesteps.numel()

    def acts_at(self, call: DenoiserCall) -> bool:
        index, steps = self.step_index(call)
        return not int(self.start * steps) <= index < int(self.stop * steps)

    def where(self) -> str:
        return f"at the steps outside [start, stop) = [{self.start}, {self.stop}) of a CFG pipeline"

    def edit(
        self, call: DenoiserCall, cond: torch.Tensor, uncond: torch.Tensor, cond_call: DenoiserCall
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return cond, cond  # u' = c: the pipeline's u + w (c − u) is c

    def __repr__(self) -> str:
        return f"GuidanceInterval(start={self.start}, stop={self.stop})"


__all__ = ["GuidanceInterval"]
