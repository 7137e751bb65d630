"""Guidance on the pipelines people use now: flow matching (Stable Diffusion 3, Flux) and transformer
denoisers (SD3's MMDiT, Flux, DiT, PixArt-α), on tiny pipelines built in the tests."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tiny import PROMPT_WIDTH, tiny_dit, tiny_flux, tiny_pixart, tiny_sd3

import atomgen
from atomgen.pipelines import CADS, AtomGuidance, DenoiserHook, FeatureGuidance, ParticleGuidance
from atomgen.pipelines.noise import flow_sigma, noise_levels, prediction_type
from atomgen.pipelines.particle_guidance import rbf_potential

BATCH = 3


def prompts(batch: int = BATCH) -> dict[str, torch.Tensor]:
    """One prompt's embeddings for every sample (as ``num_images_per_prompt=batch`` gives): the batch
    methods act within the samples of a prompt."""
    generator = torch.Generator().manual_seed(7)
    return {
        "prompt_embeds": torch.randn(1, 5, PROMPT_WIDTH, generator=generator).repeat(batch, 1, 1),
        "pooled_prompt_embeds": torch.randn(1, PROMPT_WIDTH, generator=generator).repeat(batch, 1),
    }


def run(name: str, pipe, steps: int = 3, seed: int = 1) -> torch.Tensor:
    """The final latents of a batch of BATCH (DiT: its decoded images), from the same noise each time."""
    generator = torch.Generator().manual_seed(seed)
    if name == "dit":
        labels = [2] * BATCH  # one class: the batch methods act within a class
        return pipe(
            labels, guidance_scale=3.0, num_inference_steps=steps, generator=generator, output_type="pt"
        ).images
    options = dict(num_inference_steps=steps, height=8, width=8, output_type="latent", generator=generator)
    if name == "pixart":  # prompt embeddings and their attention masks, as T5 would give them
        embeds = prompts()["prompt_embeds"]
        mask = torch.ones(embeds.shape[:2])
        return pipe(
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt=None,
            negative_prompt_embeds=torch.zeros_like(embeds),
            negative_prompt_attention_mask=mask,
            guidance_scale=3.0,
            use_resolution_binning=False,
            **options,
        ).images
    if name == "sd3":
        embeds = prompts()
        negative = {f"negative_{k}": torch.zeros_like(v) for k, v in embeds.items()}
        return pipe(**embeds, **negative, guidance_scale=3.0, **options).images
    return pipe(**prompts(), **options).images  # Flux: guidance-distilled, one pass per step


PIPELINES = {"sd3": tiny_sd3, "flux": tiny_flux, "dit": tiny_dit, "pixart": tiny_pixart}


def spread(samples: torch.Tensor) -> float:
    return torch.pdist(samples.flatten(1).double()).mean().item()


def test_flow_sigma_reads_both_timestep_conventions():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    t, sigma = scheduler.timesteps[1:2], scheduler.sigmas[1:2].double()
    torch.testing.assert_close(flow_sigma(scheduler, t), sigma)  # SD3 passes σ · 1000
    torch.testing.assert_close(flow_sigma(scheduler, t / 1000), sigma)  # Flux passes σ
    fraction, alpha, noise = noise_levels(scheduler, t.expand(2))
    torch.testing.assert_close(fraction, sigma.expand(2))
    torch.testing.assert_close(alpha, 1 - sigma.expand(2))
    torch.testing.assert_close(noise, sigma.expand(2))
    assert prediction_type(scheduler) == "flow"


@pytest.mark.parametrize("name", PIPELINES)
def test_strength_zero_is_stock_and_remove_restores(name):
    pipe = PIPELINES[name]()
    stock = run(name, pipe)
    with AtomGuidance(pipe, atom_scale=0.0):
        assert torch.equal(run(name, pipe), stock)
    for install in (
        lambda: AtomGuidance(pipe, atom_scale=0.3, normalize=True),
        lambda: FeatureGuidance(pipe, feature_scale=0.3),
        lambda: ParticleGuidance(pipe, pg_scale=0.3, normalize=True),
    ):
        with install():
            assert not torch.equal(run(name, pipe), stock)
        assert torch.equal(run(name, pipe), stock)


@pytest.mark.parametrize("name", PIPELINES)
def test_spread_rises_with_strength(name):
    pipe = PIPELINES[name]()
    spreads = []
    for strength in (0.0, 0.2, 0.5):
        with AtomGuidance(pipe, atom_scale=strength, normalize=True, active_range=(0.0, 1.0)):
            spreads.append(spread(run(name, pipe, steps=10)))
    assert spreads[0] < spreads[1] < spreads[2], spreads


@pytest.mark.parametrize("name", PIPELINES)
def test_cads_anneals_the_transformer_conditioning(name):
    pipe = PIPELINES[name]()
    stock = run(name, pipe)
    with CADS(pipe, tau1=0.0, tau2=0.5, generator=torch.Generator().manual_seed(0)):
        annealed = run(name, pipe)
    assert not torch.equal(annealed, stock)
    assert torch.equal(run(name, pipe), stock)


def test_velocity_correction_is_exact_on_stable_diffusion_3():
    """One Euler step from σ = 1 to 0: the latents move by −Δv = −γ σ ∇E(z_1), both CFG halves alike."""
    pipe, gamma = tiny_sd3(), 0.7
    stock = run("sd3", pipe, steps=1)
    with ParticleGuidance(pipe, pg_scale=gamma):
        guided = run("sd3", pipe, steps=1)
    noise = pipe.prepare_latents(BATCH, 4, 8, 8, torch.float32, "cpu", torch.Generator().manual_seed(1))
    latents = noise.flatten(1).requires_grad_()
    (grad,) = torch.autograd.grad(rbf_potential(latents), latents)
    torch.testing.assert_close(guided - stock, -gamma * grad.view_as(noise), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "site", "tokens"),
    [
        ("sd3", "transformer_blocks.0", 64),
        ("flux", "transformer_blocks.0", 16),
        ("flux", "single_transformer_blocks.0", 16),
    ],
)
def test_dual_stream_sites_separate_the_image_tokens(name, site, tokens):
    pipe = PIPELINES[name]()
    with atomgen.attach(pipe.transformer, site, None) as handle:
        stock = run(name, pipe, steps=1)
    assert handle.features.shape[1] == tokens  # the image tokens, not the 5 text tokens
    with AtomGuidance(pipe, atom_scale=0.3, site=site, normalize=True):
        assert not torch.equal(run(name, pipe, steps=1), stock)


def test_a_list_of_blocks_is_not_a_site():
    pipe = tiny_flux()
    with pytest.raises(ValueError, match=r"list of 1 blocks.*single_transformer_blocks\.0"):
        AtomGuidance(pipe, atom_scale=0.3, site="single_transformer_blocks")


@pytest.mark.parametrize(
    ("name", "guided"),
    [
        ("sd3", slice(BATCH, None)),
        ("flux", slice(None)),
        ("dit", slice(None, BATCH)),
        ("pixart", slice(BATCH, None)),
    ],
)
def test_each_pipeline_s_conditional_rows_are_found(name, guided):
    """SD3 and PixArt batch [uncond, cond], DiT [cond, uncond] (null label 1000 second), Flux does not
    double."""

    class Record(DenoiserHook):
        needs_batch, seen = False, []

        def before_forward(self, call):
            self.seen.append(call.guided)
            return False

    pipe = PIPELINES[name]()
    with Record(pipe) as record:
        run(name, pipe, steps=1)
    assert record.seen == [guided]
