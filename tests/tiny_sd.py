"""A tiny Stable Diffusion pipeline for the sampling-method tests, saved and reloaded by path.

A tiny UNet2DConditionModel, a CLIPTextModel from a small config and a CLIPTokenizer over a byte-level
vocabulary written here: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from tiny import quiet, tiny_conditional_unet, tiny_unet, tiny_vae

from atomgen import AtomSeparation
from atomgen.pipelines.atom_guidance import GUIDANCE_KERNEL


def tiny_stable_diffusion(folder: Path, prediction_type: str = "v_prediction") -> StableDiffusionPipeline:
    """A tiny ``StableDiffusionPipeline``, saved to ``folder / "sd"`` and loaded back from there."""
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(tokens),
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            bos_token_id=len(tokens) - 2,
            eos_token_id=len(tokens) - 1,
            pad_token_id=len(tokens) - 1,
        )
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(in_channels=3, out_channels=3, latent_channels=4, sample_size=16),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_conditional_unet(),
        scheduler=DDIMScheduler(clip_sample=False, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "sd")
    return quiet(StableDiffusionPipeline.from_pretrained(folder / "sd"))


def img2img(pipe: StableDiffusionPipeline) -> StableDiffusionImg2ImgPipeline:
    """The img2img pipeline of the same components."""
    return quiet(StableDiffusionImg2ImgPipeline(**pipe.components))


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def ddim(prediction_type: str = "epsilon", **unet_options) -> DDIMPipeline:
    scheduler = DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    return quiet(DDIMPipeline(tiny_unet(**unet_options), scheduler))


def sample(pipe, batch_size: int = 6, steps: int = 8, **options) -> torch.Tensor:
    return pipe(
        batch_size=batch_size, num_inference_steps=steps, generator=seed(), output_type="pt", **options
    ).images


def mean_pairwise_distance(x: torch.Tensor) -> float:
    flat = x.flatten(1).double()
    return float(torch.pdist(flat).mean())


def no_hooks(unet) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def stable_diffusion(pipe, images: int = 4, **options) -> torch.Tensor:
    options = {"num_inference_steps": 4, "guidance_scale": 7.5, "height": 16, "width": 16} | options
    return pipe(
        "a cat", num_images_per_prompt=images, generator=seed(), output_type="latent", **options
    ).images


def energy_gradient(unet, site: str, z: torch.Tensor, t, **kwargs) -> torch.Tensor:
    """∇_z Σ_A e_A by hand: the denoiser's activations at the site, a training-free AtomSeparation."""
    captured = {}
    hook = unet.get_submodule(site).register_forward_hook(lambda m, i, o: captured.update(features=o))
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        unet(z, t, **kwargs)
        hook.remove()
        features = captured["features"]
        energy = AtomSeparation(dim=features.shape[1], learn_roles=False, kernel=GUIDANCE_KERNEL)(
            features
        ).energy.sum()
        return torch.autograd.grad(energy, z)[0]


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory) -> StableDiffusionPipeline:
    """A fixture: :func:`tiny_stable_diffusion` once per test module."""
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))
