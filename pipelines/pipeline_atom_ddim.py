"""``AtomDDIMPipeline``: diffusers' DDIM sampling, with atom guidance and the separation component."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from atomgen.separation import AtomSeparation

from .noise import DEFAULT_ACTIVE_RANGE, is_flow_matching
from .pipeline_utils import AtomUNetPipeline, StepEndCallback


class AtomDDIMPipeline(AtomUNetPipeline):
    r"""DDIM sampling of an unconditional (or class-conditional) ``UNet2DModel``, with atom guidance.

    With ``atom_scale=0`` (the default) it samples exactly as diffusers' ``DDIMPipeline`` (the
    same images for the same generator). The ``separation`` component is the :class:`AtomSeparation`
    trained with the UNet, if any; atom guidance uses it at ``separation_site``.

    Parameters:
        unet ([`UNet2DModel`]): the denoiser.
        scheduler ([`DDIMScheduler`]): its scheduler; any diffusers scheduler config is converted to
            [`DDIMScheduler`], as ``DDIMPipeline`` does.
        separation ([`AtomSeparation`], *optional*): the separation module trained with the UNet.
        separation_site (`str`, defaults to `"mid_block"`): the UNet module it was attached to.

    Example:
        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from atomgen import AtomSeparation
        >>> from atomgen.pipelines import AtomDDIMPipeline
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomDDIMPipeline(unet, DDIMScheduler(), separation=AtomSeparation(dim=16))
        >>> pipe.set_progress_bar_config(disable=True)
        >>> generator = torch.Generator().manual_seed(0)
        >>> images = pipe(batch_size=4, num_inference_steps=10, generator=generator,
        ...     atom_scale=10.0, output_type="pt").images
        >>> images.shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDIMScheduler,
        separation: AtomSeparation | None = None,
        separation_site: str = "mid_block",
    ):
        super().__init__()
        if is_flow_matching(scheduler):  # converted to DDIM, it would be read as a DDPM's: wrong
            raise ValueError(
                f"{type(self).__name__} samples a DDPM-trained UNet by DDIM; this one was trained as a "
                f"rectified flow ({type(scheduler).__name__}, velocity prediction). Sample it with "
                "AtomDDPMPipeline or diffusers' DDPMPipeline, whose loops step any scheduler, or with "
                "AtomClassConditionalPipeline if it is class-conditional."
            )
        # make sure the scheduler can always be converted to DDIM
        scheduler = DDIMScheduler.from_config(scheduler.config)
        self._register(unet, scheduler, separation, separation_site)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        use_clipped_model_output: bool | None = None,
        class_labels: torch.Tensor | list[int] | int | None = None,
        latents: torch.Tensor | None = None,
        atom_scale: float = 0.0,
        atom_active_range: tuple[float, float] = DEFAULT_ACTIVE_RANGE,
        atom_site: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        r"""Sample a batch of images.

        Args:
            batch_size (`int`, defaults to 1): the number of images (at least 2 with atom guidance).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): for reproducible
                sampling.
            eta (`float`, defaults to 0.0): η of DDIM: 0 is deterministic DDIM, 1 is DDPM.
            num_inference_steps (`int`, defaults to 50): denoising steps.
            use_clipped_model_output (`bool`, *optional*): see [`DDIMScheduler.step`]; `None` passes
                nothing.
            class_labels (`torch.Tensor`, `list[int]` or `int`, *optional*): for a class-conditional
                UNet, one label per image or one for all.
            latents (`torch.Tensor`, *optional*): the initial noise, instead of drawing it.
            atom_scale (`float`, defaults to 0.0): ``γ`` of atom guidance
                ([`~atomgen.pipelines.AtomGuidance`]); 0 samples as without it.
            atom_active_range (`tuple[float, float]`, defaults to `(0.4, 1.0)`): where atom guidance is on,
                as fractions of the trajectory (1 = pure noise).
            atom_site (`str`, *optional*): the UNet module to separate at; defaults to
                ``separation_site``.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): called as ``callback_on_step_end(pipe, i, t,
                callback_kwargs)`` after each step; it may return ``{"latents": ...}`` to replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the tensors passed in
                ``callback_kwargs``; only `"latents"`.
            kwargs: the deprecated names of atom guidance's options, ``guidance_strength``,
                ``guidance_interval`` and ``guidance_site`` (a ``FutureWarning``; removed in the next release).

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images, in ``[0, 1]``.
        """
        # Copied from atomgen.pipelines.pipeline_atom_ddpm.AtomDDPMPipeline.__call__, but one line
        # 1. Check inputs
        tensor_inputs = self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        atom_scale, atom_active_range, atom_site = self.check_call_options(
            atom_scale, atom_active_range, atom_site, kwargs
        )

        # 2. Sample gaussian noise to begin the loop
        latents = self.prepare_latents(batch_size, generator, latents)
        class_labels = self.prepare_class_labels(class_labels, batch_size)

        # 3. Set the timesteps, and the options of the scheduler's step
        self.scheduler.set_timesteps(num_inference_steps)
        # not copied: DDIM's step takes η, and may use the clipped model output
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta, use_clipped_model_output)

        # 4. Denoising loop; atom guidance, when on, corrects the UNet's output in a hook on the UNet
        with self.atom_guidance(atom_scale, atom_active_range, atom_site):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                # 4.1 predict the noise
                model_output = self.unet(latents, t, class_labels=class_labels).sample

                # 4.2 compute the previous sample: x_t -> x_t-1
                latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

                # 4.3 let the callback see (and replace) the latents
                latents = self.step_end(callback_on_step_end, tensor_inputs, i, t, latents)

        # 5. Post-process
        image = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


__all__ = ["AtomDDIMPipeline"]
