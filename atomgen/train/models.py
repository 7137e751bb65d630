"""Generators built from a :class:`~atomgen.train.config.ModelConfig`, and their separation modules."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from ..baselines import DispersiveLoss
from ..hooks import attach
from ..separation import AtomSeparation
from .config import ModelConfig, SeparationConfig

DEFAULT_SITES = {"ddpm": "mid_block", "vae": "encoder"}  # dit: the middle block, see default_site


def build_model(config: ModelConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    """A fresh ``UNet2DModel`` (``ddpm``), ``DiTTransformer2DModel`` (``dit``) or ``AutoencoderKL``
    (``vae``) for images of ``(C, H, W)``."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}×{width}; set data.resolution")
    if config.family == "dit":
        return _build_dit(config, channels, height)
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


def _build_dit(config: ModelConfig, channels: int, side: int) -> DiTTransformer2DModel:
    """A pixel-space DiT; its label embedding has ``num_classes + 1`` rows, the last the null label."""
    if side % config.dit_patch_size:
        raise ValueError(
            f"images of side {side} do not split into patches of model.dit_patch_size={config.dit_patch_size}; "
            "change the patch size or set data.resolution"
        )
    model = DiTTransformer2DModel(
        num_attention_heads=config.dit_heads,
        attention_head_dim=config.dit_head_dim,
        in_channels=channels,
        out_channels=channels,  # no learned-variance channels: the losses here are plain MSE
        num_layers=config.dit_layers,
        sample_size=side,
        patch_size=config.dit_patch_size,
        num_embeds_ada_norm=config.num_classes,  # DiT adds the null row num_classes itself (as DiTPipeline)
    )
    # Every block's label embedding would drop labels on its own, from the global RNG; the loop already
    # drops them once per image, seeded (train.label_dropout), as it does for the UNet.
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return model


def build_scheduler(config: ModelConfig) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The training schedule of ``config.objective``, saved with the exported pipeline."""
    if config.objective == "flow":  # timesteps σ · T, σ ∈ [0, 1]; shift 1: the plain rectified flow
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.objective,
    )


def default_site(config: ModelConfig) -> str:
    """Where the separation loss attaches unless ``separation.site`` says otherwise: the UNet's
    ``mid_block``, the VAE's ``encoder`` (the posterior mean), the DiT's middle transformer block."""
    if config.family == "dit":
        return f"transformer_blocks.{config.dit_layers // 2}"
    return DEFAULT_SITES[config.family]


def site_of(separation: SeparationConfig, model: ModelConfig) -> str:
    return separation.site or default_site(model)


@torch.no_grad()
def probe_site(model: nn.Module, site: str, image_shape: tuple[int, int, int]) -> torch.Size:
    """Shape of the activations at ``site`` for a batch of two images (one forward, no gradient)."""
    device = next(model.parameters()).device
    images = torch.zeros(2, *image_shape, device=device)
    with attach(model, site, None) as handle:
        if isinstance(model, AutoencoderKL):
            model.encode(images)
        else:
            zeros = torch.zeros(2, dtype=torch.long, device=device)
            conditional = isinstance(model, DiTTransformer2DModel) or model.config.num_class_embeds
            model(images, zeros, class_labels=zeros if conditional else None)
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
