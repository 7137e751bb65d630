"""ParticleGuidance on real diffusers pipelines."""

from __future__ import annotations

import torch
from tiny_sd import (
    ddim,
    mean_pairwise_distance,
    no_hooks,
    sample,
    seed,
)

from atomgen.pipelines import AtomGuidance, ParticleGuidance
from atomgen.pipelines.particle_guidance import rbf_potential

# --- Particle Guidance ----------------------------------------------------------------------------


def test_particle_guidance_kernel_and_strength():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    bandwidth = 16.0 / torch.log(torch.tensor(4.0))  # median of (9, 16, 25), over log(B + 1)
    expected = 2 * sum(torch.exp(-torch.tensor(d) / bandwidth) for d in (9.0, 16.0, 25.0))
    torch.testing.assert_close(rbf_potential(points), expected)

    pipe = ddim("v_prediction")
    stock = sample(pipe)
    with ParticleGuidance(pipe, pg_scale=0.0):
        assert torch.equal(sample(pipe), stock)
    distances = [mean_pairwise_distance(stock)]
    for strength in (0.5, 2.0):
        with ParticleGuidance(pipe, pg_scale=strength):
            distances.append(mean_pairwise_distance(sample(pipe)))
    assert distances[0] < distances[1] < distances[2], distances
    assert torch.equal(sample(pipe), stock) and no_hooks(pipe.unet)


def test_particle_guidance_default_interval_is_sigma_at_least_one():
    pipe = ddim()
    z = torch.randn(3, 1, 8, 8, generator=seed())
    alpha_bar = pipe.scheduler.alphas_cumprod
    t_half = int((alpha_bar <= 0.5).nonzero()[0])  # σ_t / α_t ≥ 1 from here on
    with torch.no_grad(), ParticleGuidance(pipe, pg_scale=1.0) as handle:
        assert "σ_t/α_t ≥ 1" in repr(handle)
        assert torch.equal(pipe.unet(z, t_half - 1).sample, pipe.unet.forward(z, t_half - 1).sample)
        assert not torch.equal(pipe.unet(z, t_half).sample, pipe.unet.forward(z, t_half).sample)


def test_atom_and_particle_guidance_together():
    pipe = ddim()
    with AtomGuidance(pipe, atom_scale=30.0), ParticleGuidance(pipe, pg_scale=1.0):
        both = sample(pipe)
    with AtomGuidance(pipe, atom_scale=30.0):
        atom = sample(pipe)
    assert not torch.equal(both, atom) and torch.isfinite(both).all()
