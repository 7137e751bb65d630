"""CADS on real diffusers pipelines."""

from __future__ import annotations

import pytest
import tiny_sd
import torch
from diffusers import DDIMScheduler
from tiny import quiet, tiny_unet
from tiny_sd import (
    ddim,
    no_hooks,
    sample,
    seed,
    stable_diffusion,
)

from atomgen.pipelines import CADS, AtomDDIMPipeline

# --- CADS -----------------------------------------------------------------------------------------

sd_pipe = tiny_sd.sd_pipe  # the fixture: a tiny Stable Diffusion, saved and reloaded


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
    with pytest.raises(ValueError, match="neither prompt embeddings nor class labels"):
        CADS(pipe)  # an unconditional model is refused before sampling
