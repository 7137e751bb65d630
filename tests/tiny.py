"""Tiny diffusers models for the tests: seconds on a CPU, seeded, in eval mode."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
    UNet2DModel,
)


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


# --- Transformer pipelines (as diffusers' own tests build them: tiny configs, nothing downloaded) ---
# The text encoders are left out: the pipelines take prompt embeddings directly (PROMPT_WIDTH wide).
PROMPT_WIDTH = 16


def tiny_latent_vae(latent_channels: int) -> AutoencoderKL:
    """A 3-channel AutoencoderKL with one block (no downsampling), for the latent pipelines."""
    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def tiny_sd3() -> StableDiffusion3Pipeline:
    """Stable Diffusion 3's pipeline: an MMDiT of 2 joint blocks on 8×8×4 latents, flow matching."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=PROMPT_WIDTH,
        pooled_projection_dim=PROMPT_WIDTH,
    ).eval()
    return quiet(
        StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_latent_vae(4),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    )


def tiny_flux() -> FluxPipeline:
    """Flux's pipeline: one dual-stream and one single-stream block, guidance-distilled (no CFG batch)."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=PROMPT_WIDTH,
        pooled_projection_dim=PROMPT_WIDTH,
        axes_dims_rope=[4, 4, 8],
    ).eval()
    return quiet(
        FluxPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_latent_vae(1),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
        )
    )


def tiny_dit() -> DiTPipeline:
    """DiT's class-conditional pipeline (learned variance, 1,000 classes as DiTPipeline assumes), DDIM."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=4,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
    return quiet(DiTPipeline(transformer=transformer, vae=tiny_latent_vae(4), scheduler=DDIMScheduler()))


def tiny_pixart() -> PixArtAlphaPipeline:
    """PixArt-α's pipeline: a 2-block transformer with cross-attention to T5-width prompts (learned
    variance), DDIM, on 8×8×4 latents; the prompts are passed as embeddings (no T5 here)."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=PROMPT_WIDTH,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()
    return quiet(
        PixArtAlphaPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=tiny_latent_vae(4),
            transformer=transformer,
            scheduler=DDIMScheduler(),
        )
    )


def quiet(pipe):
    """``pipe`` without its progress bar."""
    pipe.set_progress_bar_config(disable=True)
    return pipe
