"""``AtomVAEPipeline``: sample an ``AutoencoderKL`` from its prior, or reconstruct images through it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from atomgen.separation import AtomSeparation

from .pipeline_utils import scale_latents, unscale_latents

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class AtomVAEPipeline(DiffusionPipeline):
    r"""Images from an ``AutoencoderKL``: decoded prior samples, or reconstructions of given images.

    Sizes, the latent width and the latent scaling (``scaling_factor``, ``shift_factor``) are read from
    ``vae.config``. Latents given to or returned by the pipeline are *scaled* latents, as diffusion
    pipelines use them: ``(z − shift_factor) · scaling_factor`` (:func:`~atomgen.pipelines.pipeline_utils.scale_latents`). The prior is ``z ~ N(0, I)`` in the VAE's
    own latent space.

    Parameters:
        vae ([`AutoencoderKL`]): the autoencoder.
        separation ([`AtomSeparation`], *optional*): the separation module trained with it (at its
            ``"encoder"`` site); saved and loaded with the pipeline.

    Example:
        >>> import torch
        >>> from diffusers import AutoencoderKL
        >>> from atomgen.pipelines import AtomVAEPipeline
        >>> vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(4, 8),
        ...     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ...     norm_num_groups=4, sample_size=8)
        >>> pipe = AtomVAEPipeline(vae)
        >>> samples = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), output_type="pt")
        >>> reconstructions = pipe(images=samples.images, output_type="pt")
        >>> samples.images.shape, reconstructions.images.shape
        (torch.Size([3, 1, 8, 8]), torch.Size([3, 1, 8, 8]))
    """

    model_cpu_offload_seq = "vae"
    _optional_components: ClassVar[list[str]] = ["separation"]

    def __init__(self, vae: AutoencoderKL, separation: AtomSeparation | None = None):
        super().__init__()
        if separation is not None and not isinstance(separation, AtomSeparation):
            raise TypeError(f"separation must be an AtomSeparation or None, got {type(separation).__name__}")
        self.register_modules(vae=vae, separation=separation)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_grayscale=self.vae.config.in_channels == 1
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """``DiffusionPipeline.from_pretrained`` for a saved pipeline; also reads a bare ``AutoencoderKL``
        directory with the separation module in its ``separation/`` subfolder (what ``atomgen train``
        writes to ``vae/``)."""
        path = Path(pretrained_model_name_or_path)
        if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        separation = None
        if (path / "separation" / "config.json").is_file():
            separation = AtomSeparation.from_pretrained(path / "separation")
        return cls(vae=AutoencoderKL.from_pretrained(path, **kwargs), separation=separation)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the latents, from ``vae.config``."""
        config = self.vae.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def encode(
        self,
        images: PipelineImageInput,
        sample_posterior: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Scaled latents of ``images`` (PIL, NumPy or tensors in ``[0, 1]``): the posterior mean, or
        a posterior sample with ``sample_posterior=True``."""
        pixels = self.image_processor.preprocess(images).to(self._execution_device, self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return scale_latents(self.vae, z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` from scaled latents."""
        return self.vae.decode(
            unscale_latents(self.vae, latents.to(self._execution_device, self.vae.dtype))
        ).sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        images: PipelineImageInput | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        sample_posterior: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Decode prior samples (default), given ``latents``, or reconstructions of ``images``.

        Args:
            batch_size (`int`, defaults to 1): the number of prior samples (ignored with ``images`` or
                ``latents``).
            images (`PipelineImageInput`, *optional*): images in ``[0, 1]`` to reconstruct.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): for the prior (or
                posterior) samples.
            latents (`torch.Tensor`, *optional*): scaled latents to decode.
            sample_posterior (`bool`, defaults to `False`): reconstruct from a posterior sample instead of
                the posterior mean.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"latent"` for the
                scaled latents themselves.
            return_dict (`bool`, defaults to `True`): return an [`ImagePipelineOutput`] or a tuple.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images in ``[0, 1]`` (or the latents).
        """
        # 1. Check inputs
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if images is not None and latents is not None:
            raise ValueError("pass images (to reconstruct) or latents (to decode), not both")

        # 2. Latents: encode the images, take the given ones, or draw z ~ N(0, I) from the prior
        if images is not None:
            latents = self.encode(images, sample_posterior=sample_posterior, generator=generator)
        elif latents is None:
            z = randn_tensor(
                (batch_size, *self.latent_shape),
                generator=generator,
                device=self._execution_device,
                dtype=self.vae.dtype,
            )
            latents = scale_latents(self.vae, z)

        # 3. Decode and post-process
        if output_type == "latent":
            image = latents
        else:
            image = self.image_processor.postprocess(self.decode(latents), output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


__all__ = ["AtomVAEPipeline"]
