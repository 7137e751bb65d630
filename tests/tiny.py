"""Tiny diffusers models for the tests: seconds on a CPU, seeded, in eval mode."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel


def tiny_unet(**kwargs) -> UNet2DModel:
    """An 8×8 one-channel UNet2DModel; its mid block is 16 channels on a 4×4 grid."""
    torch.manual_seed(0)
    options = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return UNet2DModel(**(options | kwargs)).eval()


def tiny_conditional_unet(**kwargs) -> UNet2DConditionModel:
    """A Stable-Diffusion-shaped UNet on 8×8 latents of 4 channels, text width 8."""
    torch.manual_seed(0)
    options = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    return UNet2DConditionModel(**(options | kwargs)).eval()


def tiny_vae(**kwargs) -> AutoencoderKL:
    """A one-channel 8×8 AutoencoderKL with 2 latent channels."""
    torch.manual_seed(0)
    options = dict(
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4,
        sample_size=8,
    )
    return AutoencoderKL(**(options | kwargs)).eval()
