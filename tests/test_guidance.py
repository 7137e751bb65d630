"""guide(), ParticleGuidance and CADS on real diffusers pipelines, with tiny models built in the test.

Stable Diffusion is built from a tiny UNet2DConditionModel, a CLIPTextModel from a small config and a
CLIPTokenizer over a byte-level vocabulary written by the test: nothing is downloaded.
"""

from __future__ import annotations

import doctest
import json

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVeScheduler,
)
from test_pipelines import quiet, seed
from tiny import tiny_conditional_unet, tiny_unet, tiny_vae

import atomgen.pipelines.cads
import atomgen.pipelines.guidance
import atomgen.pipelines.particle_guidance
import atomgen.pipelines.pipeline_atom_ddim
import atomgen.pipelines.pipeline_atom_ddpm
import atomgen.pipelines.pipeline_atom_vae
from atomgen import AtomSeparation
from atomgen.pipelines import CADS, AtomDDIMPipeline, AtomGuidance, ParticleGuidance, guide
from atomgen.pipelines.denoiser_hook import noise_levels
from atomgen.pipelines.guidance import GUIDANCE_KERNEL
from atomgen.pipelines.particle_guidance import rbf_potential


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


def no_hooks(unet) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


# --- Equivalence: strength 0 and a removed handle are the stock pipeline ---------------------------


@pytest.mark.parametrize(
    ("pipeline", "scheduler"), [(DDPMPipeline, DDPMScheduler), (DDIMPipeline, DDIMScheduler)]
)
def test_strength_zero_and_removed_handle_are_stock(pipeline, scheduler):
    unet = tiny_unet()
    pipe = quiet(pipeline(unet, scheduler()))
    config = dict(unet.config)
    stock = sample(pipe)
    with guide(pipe, strength=0.0):
        assert torch.equal(sample(pipe), stock)
    handle = guide(pipe, strength=300.0)
    assert pipe.unet is unet and dict(pipe.unet.config) == config and pipe.unet.dtype == torch.float32
    assert not torch.allclose(sample(pipe), stock)
    handle.remove()
    assert torch.equal(sample(pipe), stock) and no_hooks(unet)
    handle.remove()  # a second remove is harmless


# --- Guidance separates the batch, more with more strength (and a negative control) ---------------


def test_strength_spreads_the_batch_in_pixel_space():
    # v-prediction keeps the sampler of an untrained UNet stable (x̂0 = α z − σ v stays bounded), so
    # the final images still reflect their trajectories; epsilon-prediction saturates them (below).
    pipe = ddim("v_prediction")
    distances = {}
    for strength in (-100.0, 0.0, 30.0, 100.0, 300.0):
        with guide(pipe, strength=strength):
            distances[strength] = mean_pairwise_distance(sample(pipe))
    values = list(distances.values())
    assert values == sorted(values) and len(set(values)) == len(values), distances
    assert distances[300.0] > 1.15 * distances[0.0] and distances[-100.0] < 0.97 * distances[0.0], distances


def test_strength_spreads_the_batch_at_the_site():
    # With epsilon-prediction the untrained UNet's images saturate, but at the guided site (where
    # the energy acts) the final samples still spread with the strength and contract when it is negative.
    pipe = ddim("epsilon")
    captured = {}
    distances = {}
    for strength in (-30.0, 0.0, 30.0, 100.0):
        with guide(pipe, strength=strength):
            images = sample(pipe)
        hook = pipe.unet.mid_block.register_forward_hook(lambda m, i, o: captured.update(features=o))
        with torch.no_grad():
            pipe.unet(images * 2 - 1, 0)
        hook.remove()
        distances[strength] = mean_pairwise_distance(captured["features"])
    values = list(distances.values())
    assert values == sorted(values) and len(set(values)) == len(values), distances


# --- One denoiser call against the formula of method.md §7 ----------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_one_call_matches_the_formula(prediction_type):
    pipe = ddim(prediction_type)
    z, t, strength = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(700), 5.0
    with torch.no_grad():
        stock = pipe.unet(z, t).sample
        with guide(pipe, strength=strength, interval=(0.0, 1.0)):
            guided = pipe.unet(z, t).sample
    alpha_bar = pipe.scheduler.alphas_cumprod[700].double()
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    delta_eps = strength * sigma * energy_gradient(pipe.unet, "mid_block", z, t).double()
    expected = {
        "epsilon": delta_eps,
        "v_prediction": delta_eps / alpha,
        "sample": -sigma / alpha * delta_eps,
    }[prediction_type]
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close((guided - stock).double(), expected, rtol=1e-4, atol=1e-7)


def test_interval_and_noise_levels():
    pipe = ddim()
    fraction, alpha, sigma = noise_levels(pipe.scheduler, torch.tensor([0.0, 499.5, 999.0]))
    assert fraction.tolist() == [0.0, 499.5 / 999, 1.0]
    torch.testing.assert_close(alpha.square() + sigma.square(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(alpha[0].square(), pipe.scheduler.alphas_cumprod[0].double())
    z = torch.randn(3, 1, 8, 8, generator=seed())
    with torch.no_grad(), guide(pipe, strength=50.0, interval=(0.5, 0.9)):
        for t, on in ((100, False), (600, True), (950, False)):
            stock_hooks_free = pipe.unet.forward(z, t).sample  # .forward skips the hooks
            assert torch.equal(pipe.unet(z, t).sample, stock_hooks_free) is not on, t


# --- Classifier-free guidance: Stable Diffusion, built tiny -----------------------------------------


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from diffusers import StableDiffusionPipeline
    from tokenizers.pre_tokenizers import ByteLevel

    folder = tmp_path_factory.mktemp("tokenizer")
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
    unet = tiny_conditional_unet()
    vae = tiny_vae(in_channels=3, out_channels=3, latent_channels=4, sample_size=16)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return quiet(pipe)


def stable_diffusion(pipe, images: int = 4, **options) -> torch.Tensor:
    options = {"num_inference_steps": 4, "guidance_scale": 7.5, "height": 16, "width": 16} | options
    return pipe(
        "a cat", num_images_per_prompt=images, generator=seed(), output_type="latent", **options
    ).images


def test_stable_diffusion_with_classifier_free_guidance(sd_pipe):
    stock = stable_diffusion(sd_pipe)
    with guide(sd_pipe, strength=0.0):
        assert torch.equal(stable_diffusion(sd_pipe), stock)
    distances = [mean_pairwise_distance(stock)]
    for strength in (100.0, 300.0):
        with guide(sd_pipe, strength=strength):
            distances.append(mean_pairwise_distance(stable_diffusion(sd_pipe)))
    assert distances[0] < distances[1] < distances[2], distances
    assert torch.equal(stable_diffusion(sd_pipe), stock) and no_hooks(sd_pipe.unet)
    with guide(sd_pipe, strength=1.0), pytest.raises(ValueError, match="num_images_per_prompt"):
        stable_diffusion(sd_pipe, images=1)


def test_classifier_free_guidance_guides_the_conditional_half(sd_pipe):
    sd_pipe._guidance_scale = 7.5  # as inside a __call__ with classifier-free guidance
    z, t, strength = torch.randn(3, 4, 8, 8, generator=seed()), torch.tensor(800), 10.0
    prompts = torch.randn(6, 5, 8, generator=seed(1))  # [uncond × 3, cond × 3]
    with torch.no_grad():
        stock = sd_pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=prompts).sample
        with guide(sd_pipe, strength=strength, interval=(0.0, 1.0)):
            guided = sd_pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=prompts).sample
    delta = (guided - stock).double()
    torch.testing.assert_close(delta[:3], delta[3:])  # the same correction for both halves
    alpha_bar = sd_pipe.scheduler.alphas_cumprod[800].double()
    grad = energy_gradient(sd_pipe.unet, "mid_block", z, t, encoder_hidden_states=prompts[3:]).double()
    expected = strength * (1 - alpha_bar).sqrt() * grad / alpha_bar.sqrt()  # v-prediction: Δv = Δε / α
    torch.testing.assert_close(delta[3:], expected, rtol=1e-3, atol=1e-6)


# --- Errors ---------------------------------------------------------------------------------------


def test_batch_of_one_is_a_clear_error():
    pipe = ddim()
    with (
        guide(pipe, strength=1.0),
        pytest.raises(ValueError, match="got 1 sample: there is nothing to separate"),
    ):
        sample(pipe, batch_size=1)
    assert torch.is_grad_enabled() and no_hooks(pipe.unet)


def test_unsupported_pipelines_and_options_are_refused():
    pipe = ddim()

    class NoDenoiser:
        scheduler = pipe.scheduler

    class LinearDenoiser:
        unet, scheduler = torch.nn.Linear(2, 2), pipe.scheduler

    class VarianceExploding:
        unet, scheduler = pipe.unet, ScoreSdeVeScheduler()

    with pytest.raises(TypeError, match="denoiser named unet or transformer"):
        guide(NoDenoiser(), strength=1.0)
    with pytest.raises(TypeError, match="unsupported denoiser Linear"):
        guide(LinearDenoiser(), strength=1.0)
    with pytest.raises(TypeError, match=r"Gaussian noise path.*ScoreSdeVeScheduler"):
        guide(VarianceExploding(), strength=1.0)
    with pytest.raises(ValueError, match="0 ≤ t_lo < t_hi ≤ 1"):
        guide(pipe, strength=1.0, interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="finite number"):
        guide(pipe, strength=float("nan"))
    with pytest.raises(ValueError, match="Close matches"):
        guide(pipe, strength=1.0, site="mid_blok")
    with pytest.raises(TypeError, match="AtomSeparation"):
        guide(pipe, strength=1.0, separation=torch.nn.Identity())
    handle = guide(pipe, strength=1.0)
    with pytest.raises(RuntimeError, match="already installed"):
        guide(pipe, strength=2.0)
    handle.remove()
    with guide(pipe, strength=1.0, site="time_embedding"), pytest.raises(RuntimeError, match="do not depend"):
        sample(pipe)
    with (
        guide(pipe, strength=1.0, separation=AtomSeparation(dim=5)),
        pytest.raises(ValueError, match="dim=16"),
    ):
        sample(pipe)
    assert torch.is_grad_enabled() and no_hooks(pipe.unet)


def test_trained_separation_is_used_at_its_site():
    separation = AtomSeparation(dim=16, learn_roles=True)
    pipe = quiet(
        AtomDDIMPipeline(tiny_unet(), DDIMScheduler(), separation=separation, separation_site="down_blocks.1")
    )
    with guide(pipe, strength=1.0) as handle:
        assert handle.site == "down_blocks.1" and handle.separation is separation
        sample(pipe, steps=3)
    with guide(pipe, strength=1.0, site="mid_block") as handle:
        assert handle.separation is None  # a training-free one is built for that site
        sample(pipe, steps=3)
        assert not handle.separation.config.learn_roles and handle.separation.config.dim == 16
    assert isinstance(handle, AtomGuidance)


# --- Particle Guidance ----------------------------------------------------------------------------


def test_particle_guidance_kernel_and_strength():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    bandwidth = 16.0 / torch.log(torch.tensor(4.0))  # median of (9, 16, 25), over log(B + 1)
    expected = 2 * sum(torch.exp(-torch.tensor(d) / bandwidth) for d in (9.0, 16.0, 25.0))
    torch.testing.assert_close(rbf_potential(points), expected)

    pipe = ddim("v_prediction")
    stock = sample(pipe)
    with ParticleGuidance(pipe, strength=0.0):
        assert torch.equal(sample(pipe), stock)
    distances = [mean_pairwise_distance(stock)]
    for strength in (0.5, 2.0):
        with ParticleGuidance(pipe, strength=strength):
            distances.append(mean_pairwise_distance(sample(pipe)))
    assert distances[0] < distances[1] < distances[2], distances
    assert torch.equal(sample(pipe), stock) and no_hooks(pipe.unet)


def test_particle_guidance_default_interval_is_sigma_at_least_one():
    pipe = ddim()
    z = torch.randn(3, 1, 8, 8, generator=seed())
    alpha_bar = pipe.scheduler.alphas_cumprod
    t_half = int((alpha_bar <= 0.5).nonzero()[0])  # σ_t / α_t ≥ 1 from here on
    with torch.no_grad(), ParticleGuidance(pipe, strength=1.0) as handle:
        assert "σ_t/α_t ≥ 1" in repr(handle)
        assert torch.equal(pipe.unet(z, t_half - 1).sample, pipe.unet.forward(z, t_half - 1).sample)
        assert not torch.equal(pipe.unet(z, t_half).sample, pipe.unet.forward(z, t_half).sample)


def test_atom_and_particle_guidance_together():
    pipe = ddim()
    with guide(pipe, strength=30.0), ParticleGuidance(pipe, strength=1.0):
        both = sample(pipe)
    with guide(pipe, strength=30.0):
        atom = sample(pipe)
    assert not torch.equal(both, atom) and torch.isfinite(both).all()


# --- CADS -----------------------------------------------------------------------------------------


def test_cads_anneals_the_class_embedding():
    unet = tiny_unet(num_class_embeds=3)
    pipe = quiet(AtomDDIMPipeline(unet, DDIMScheduler(clip_sample=False)))
    z, labels = torch.randn(2, 1, 8, 8, generator=seed()), torch.tensor([1, 2])
    # Above τ2, with s = 0, γ = 0 and no rescaling: the class embedding is exactly zero.
    zeroed = unet.class_embedding.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    with torch.no_grad():
        unconditioned = unet(z, 990, class_labels=labels).sample
    zeroed.remove()
    with torch.no_grad(), CADS(pipe, noise_scale=0.0, rescale=False):
        torch.testing.assert_close(unet(z, 990, class_labels=labels).sample, unconditioned)
        stock_late = unet.forward(z, 300, class_labels=labels).sample  # τ ≤ τ1: untouched
        assert torch.equal(unet(z, 300, class_labels=labels).sample, stock_late)
    stock = sample(pipe, batch_size=2, class_labels=labels)
    with CADS(pipe, generator=seed(5)):
        annealed = sample(pipe, batch_size=2, class_labels=labels)
    assert not torch.equal(annealed, stock)
    assert no_hooks(unet) and torch.equal(sample(pipe, batch_size=2, class_labels=labels), stock)


def test_cads_on_stable_diffusion_anneals_the_conditional_half(sd_pipe):
    sd_pipe._guidance_scale = 7.5
    seen = {}
    z, prompts = torch.randn(2, 4, 8, 8, generator=seed()), torch.randn(4, 5, 8, generator=seed(1))
    with CADS(sd_pipe, generator=seed(2)) as cads:
        spy = sd_pipe.unet.register_forward_pre_hook(
            lambda m, a, k: seen.update(prompts=k["encoder_hidden_states"]), with_kwargs=True
        )
        with torch.no_grad():
            sd_pipe.unet(torch.cat([z, z]), 850, encoder_hidden_states=prompts)
        spy.remove()
        gamma = cads.schedule(torch.tensor(850 / 999, dtype=torch.float64))
        assert float(gamma) == pytest.approx((0.9 - 850 / 999) / (0.9 - 0.6))
    annealed = seen["prompts"]
    assert torch.equal(annealed[:2], prompts[:2])  # the unconditional half is left alone
    assert not torch.allclose(annealed[2:], prompts[2:])
    dims = (1, 2)  # rescaled to each prompt's own mean and standard deviation (ψ = 1)
    torch.testing.assert_close(annealed[2:].mean(dims), prompts[2:].mean(dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(annealed[2:].std(dims), prompts[2:].std(dims))
    stock = stable_diffusion(sd_pipe)
    with CADS(sd_pipe, generator=seed(3)):
        assert not torch.equal(stable_diffusion(sd_pipe), stock)
    assert torch.equal(stable_diffusion(sd_pipe), stock) and no_hooks(sd_pipe.unet)


def test_cads_needs_a_conditioning_and_valid_options():
    pipe = ddim()
    with pytest.raises(ValueError, match="tau1 < tau2"):
        CADS(pipe, tau1=0.9, tau2=0.6)
    with pytest.raises(ValueError, match="psi"):
        CADS(pipe, psi=2.0)
    with CADS(pipe), pytest.raises(ValueError, match="has none"):
        sample(pipe)


# --- Docstring examples run as written --------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        atomgen.pipelines.guidance,
        atomgen.pipelines.particle_guidance,
        atomgen.pipelines.cads,
        atomgen.pipelines.pipeline_atom_ddpm,
        atomgen.pipelines.pipeline_atom_ddim,
        atomgen.pipelines.pipeline_atom_vae,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
