"""AtomGuidance on real diffusers pipelines (DDPM, DDIM, Stable Diffusion), tiny models built in the test."""

from __future__ import annotations

import pytest
import tiny_sd
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, ScoreSdeVeScheduler
from tiny import quiet, tiny_unet
from tiny_sd import (
    ddim,
    energy_gradient,
    mean_pairwise_distance,
    no_hooks,
    sample,
    seed,
    stable_diffusion,
)

from atomgen import AtomSeparation
from atomgen.pipelines import AtomDDIMPipeline, AtomGuidance, SparseAtomGuidance
from atomgen.pipelines.noise import noise_levels

# --- Equivalence: strength 0 and a removed handle are the stock pipeline ---------------------------

sd_pipe = tiny_sd.sd_pipe  # the fixture: a tiny Stable Diffusion, saved and reloaded


@pytest.mark.parametrize(
    ("pipeline", "scheduler"), [(DDPMPipeline, DDPMScheduler), (DDIMPipeline, DDIMScheduler)]
)
def test_strength_zero_and_removed_handle_are_stock(pipeline, scheduler):
    unet = tiny_unet()
    pipe = quiet(pipeline(unet, scheduler()))
    config = dict(unet.config)
    stock = sample(pipe)
    with AtomGuidance(pipe, atom_scale=0.0):
        assert torch.equal(sample(pipe), stock)
    handle = AtomGuidance(pipe, atom_scale=300.0)
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
        with AtomGuidance(pipe, atom_scale=strength):
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
        with AtomGuidance(pipe, atom_scale=strength):
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
        with AtomGuidance(pipe, atom_scale=strength, active_range=(0.0, 1.0)):
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
    with torch.no_grad(), AtomGuidance(pipe, atom_scale=50.0, active_range=(0.5, 0.9)):
        for t, on in ((100, False), (600, True), (950, False)):
            stock_hooks_free = pipe.unet.forward(z, t).sample  # .forward skips the hooks
            assert torch.equal(pipe.unet(z, t).sample, stock_hooks_free) is not on, t


# --- Classifier-free guidance: Stable Diffusion, built tiny -----------------------------------------


def test_stable_diffusion_with_classifier_free_guidance(sd_pipe):
    stock = stable_diffusion(sd_pipe)
    with AtomGuidance(sd_pipe, atom_scale=0.0):
        assert torch.equal(stable_diffusion(sd_pipe), stock)
    distances = [mean_pairwise_distance(stock)]
    for strength in (100.0, 300.0):
        with AtomGuidance(sd_pipe, atom_scale=strength):
            distances.append(mean_pairwise_distance(stable_diffusion(sd_pipe)))
    assert distances[0] < distances[1] < distances[2], distances
    assert torch.equal(stable_diffusion(sd_pipe), stock) and no_hooks(sd_pipe.unet)
    with AtomGuidance(sd_pipe, atom_scale=1.0), pytest.raises(ValueError, match="num_images_per_prompt"):
        stable_diffusion(sd_pipe, images=1)


def test_classifier_free_guidance_guides_the_conditional_half(sd_pipe):
    sd_pipe._guidance_scale = 7.5  # as inside a __call__ with classifier-free guidance
    z, t, strength = torch.randn(3, 4, 8, 8, generator=seed()), torch.tensor(800), 10.0
    prompts = torch.randn(2, 5, 8, generator=seed(1)).repeat_interleave(3, 0)  # [uncond × 3, cond × 3]
    with torch.no_grad():
        stock = sd_pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=prompts).sample
        with AtomGuidance(sd_pipe, atom_scale=strength, active_range=(0.0, 1.0)):
            guided = sd_pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=prompts).sample
    delta = (guided - stock).double()
    torch.testing.assert_close(delta[:3], delta[3:], atol=1e-6, rtol=1e-5)  # the same for both halves
    alpha_bar = sd_pipe.scheduler.alphas_cumprod[800].double()
    grad = energy_gradient(sd_pipe.unet, "mid_block", z, t, encoder_hidden_states=prompts[3:]).double()
    expected = strength * (1 - alpha_bar).sqrt() * grad / alpha_bar.sqrt()  # v-prediction: Δv = Δε / α
    torch.testing.assert_close(delta[3:], expected, rtol=1e-3, atol=1e-6)


# --- Errors ---------------------------------------------------------------------------------------


def test_batch_of_one_is_a_clear_error():
    pipe = ddim()
    with (
        AtomGuidance(pipe, atom_scale=1.0),
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
        AtomGuidance(NoDenoiser(), atom_scale=1.0)
    with pytest.raises(TypeError, match="unsupported denoiser Linear"):
        AtomGuidance(LinearDenoiser(), atom_scale=1.0)
    with pytest.raises(TypeError, match=r"Gaussian noise path.*ScoreSdeVeScheduler"):
        AtomGuidance(VarianceExploding(), atom_scale=1.0)
    with pytest.raises(ValueError, match="0 ≤ t_lo < t_hi ≤ 1"):
        AtomGuidance(pipe, atom_scale=1.0, active_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="finite number"):
        AtomGuidance(pipe, atom_scale=float("nan"))
    with pytest.raises(ValueError, match="Close matches"):
        AtomGuidance(pipe, atom_scale=1.0, site="mid_blok")
    with pytest.raises(TypeError, match="AtomSeparation"):
        AtomGuidance(pipe, atom_scale=1.0, separation=torch.nn.Identity())
    handle = AtomGuidance(pipe, atom_scale=1.0)
    with pytest.raises(RuntimeError, match="already installed"):
        AtomGuidance(pipe, atom_scale=2.0)
    handle.remove()
    with (
        AtomGuidance(pipe, atom_scale=1.0, site="time_embedding"),
        pytest.raises(ValueError, match="do not depend on the latents"),
    ):
        sample(pipe)
    with (
        AtomGuidance(pipe, atom_scale=1.0, separation=AtomSeparation(dim=5)),
        pytest.raises(ValueError, match="dim=16"),
    ):
        sample(pipe)
    assert torch.is_grad_enabled() and no_hooks(pipe.unet)


def test_trained_separation_is_used_at_its_site():
    separation = AtomSeparation(dim=16, learn_roles=True)
    pipe = quiet(
        AtomDDIMPipeline(tiny_unet(), DDIMScheduler(), separation=separation, separation_site="down_blocks.1")
    )
    with AtomGuidance(pipe, atom_scale=1.0) as handle:
        assert handle.site == "down_blocks.1" and handle.separation is separation
        sample(pipe, steps=3)
    with AtomGuidance(pipe, atom_scale=1.0, site="mid_block") as handle:
        assert handle.separation is None  # a training-free one is built for that site
        sample(pipe, steps=3)
        assert not handle.separation.config.learn_roles and handle.separation.config.dim == 16
    assert isinstance(handle, AtomGuidance)


# --- The sparse, hard-core variant ----------------------------------------------------------------


def test_sparse_energy_is_the_hard_core_closed_form():
    pipe = ddim()
    with SparseAtomGuidance(pipe, atom_scale=1.0, radius=0.5) as handle:
        h = torch.tensor([[3.0, 0.0], [3.0, 1.0], [-3.0, 0.0]], requires_grad=True)
        energy = handle.energy(h, torch.tensor([0, 0, 0]))
        scale = h.detach().norm(dim=1).mean()
        d = 1.0 / scale  # only the first pair lies within r: ½ (r − d)²
        torch.testing.assert_close(energy, 0.5 * (0.5 - d) ** 2)
        (grad,) = torch.autograd.grad(energy, h)
        torch.testing.assert_close(grad[0], -(0.5 - d) * (h[0] - h[1]).detach() / (1.0 * scale))
        assert torch.equal(grad[2], torch.zeros(2))  # the far sample is not touched
        assert handle.energy(h, torch.tensor([0, 1, 1])) == 0  # nor across groups


def test_sparse_guidance_leaves_far_apart_samples_alone():
    pipe = ddim("v_prediction")
    stock = sample(pipe)
    with SparseAtomGuidance(pipe, atom_scale=1.0, radius=1e-6, normalize=True):
        assert torch.equal(sample(pipe), stock)
    with SparseAtomGuidance(pipe, atom_scale=1.0, radius=2.0, normalize=True) as handle:
        spread = mean_pairwise_distance(sample(pipe))
    assert handle.guided_calls > 0 and spread > mean_pairwise_distance(stock)
