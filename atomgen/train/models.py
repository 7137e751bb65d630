"""Generators built from a :class:`~atomgen.train.config.ModelConfig`, and their separation modules."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from torch import nn

from ..baselines import DispersiveLoss
from ..hooks import attach
from ..separation import AtomSeparation
from .config import ModelConfig, SeparationConfig

DEFAULT_SITES = {"ddpm": "mid_block", "vae": "encoder"}


def build_model(config: ModelConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    """A fresh ``UNet2DModel`` (DDPM) or ``AutoencoderKL`` (VAE) for images of ``(C, H, W)``."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}×{width}; set data.resolution")
    levels = len(config.block_out_channels)
    if height % 2 ** (levels - 1):
        raise ValueError(
            f"images of side {height} cannot be halved {levels - 1} times for "
            f"model.block_out_channels={config.block_out_channels}; use fewer levels or set data.resolution"
        )
    if config.family == "vae":
        return AutoencoderKL(
            in_channels=channels,
            out_channels=channels,
            latent_channels=config.latent_channels,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            sample_size=height,
        )
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:  # self-attention at the lowest resolution only: cheap, and where it helps most
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=height,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=None if config.num_classes is None else config.num_classes + 1,  # + the null label
    )


def build_scheduler(config: ModelConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.objective,
    )


def site_of(config: SeparationConfig, family: str) -> str:
    return config.site or DEFAULT_SITES[family]


@torch.no_grad()
def probe_site(model: nn.Module, site: str, image_shape: tuple[int, int, int]) -> torch.Size:
    """Shape of the activations at ``site`` for a batch of two images (one forward, no gradient)."""
    device = next(model.parameters()).device
    images = torch.zeros(2, *image_shape, device=device)
    with attach(model, site, None) as handle:
        if isinstance(model, AutoencoderKL):
            model.encode(images)
        else:
            labels = (
                torch.zeros(2, dtype=torch.long, device=device) if model.config.num_class_embeds else None
            )
            model(images, torch.zeros(2, dtype=torch.long, device=device), class_labels=labels)
        return handle.features.shape


def build_separation(config: SeparationConfig, site_shape: torch.Size) -> nn.Module | None:
    """The loss of ``config.method`` sized for activations of ``site_shape`` (``None`` for ``none``)."""
    if config.method == "none":
        return None
    if config.method == "dispersive":
        return DispersiveLoss(**config.options)
    dim = site_shape[1] if len(site_shape) == 4 else site_shape[-1]
    try:
        return AtomSeparation(dim=dim, **config.options)
    except TypeError as error:
        raise ValueError(f"separation.options: {error}") from None
