"""pipelines.noise: noise levels and the conversions between prediction types, against closed forms."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, ScoreSdeVeScheduler

from atomgen.pipelines.noise import (
    check_range,
    check_scheduler,
    epsilon_change,
    from_x0,
    noise_levels,
    prediction_type,
    to_epsilon,
    to_x0,
)

KINDS = ("epsilon", "v_prediction", "sample")


def path(kind: str):
    """A point of the path z = α x_0 + σ ε, and the true prediction of kind ``kind`` there."""
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64).unbind(0)[:2]
    if kind == "flow":
        sigma = torch.tensor(0.3, dtype=torch.float64)
        alpha = 1 - sigma
    else:
        alpha = torch.tensor(0.6, dtype=torch.float64)
        sigma = (1 - alpha**2).sqrt()
    z = alpha * x0 + sigma * eps
    truth = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0, "flow": eps - x0}[kind]
    return x0, eps, z, alpha, sigma, truth


@pytest.mark.parametrize("kind", [*KINDS, "flow"])
def test_conversions_recover_the_path(kind):
    x0, eps, z, alpha, sigma, prediction = path(kind)
    torch.testing.assert_close(to_x0(prediction, z, alpha, sigma, kind), x0)
    torch.testing.assert_close(to_epsilon(prediction, z, alpha, sigma, kind), eps)
    torch.testing.assert_close(from_x0(x0, z, alpha, sigma, kind), prediction)


@pytest.mark.parametrize("kind", KINDS)
def test_epsilon_change_is_the_change_of_the_prediction(kind):
    _, eps, z, alpha, sigma, prediction = path(kind)
    delta = 0.1 * torch.ones_like(eps)
    # the prediction whose ε̂ is ε + Δε at the same z_t: its x̂_0 = (z − σ (ε + Δε)) / α
    moved = from_x0((z - sigma * (eps + delta)) / alpha, z, alpha, sigma, kind)
    torch.testing.assert_close(epsilon_change(delta, alpha, sigma, kind), moved - prediction)


def test_noise_levels_of_both_paths():
    ddim = DDIMScheduler()
    fraction, alpha, sigma = noise_levels(ddim, torch.tensor([0, 999]))
    assert fraction.tolist() == [0.0, 1.0]
    torch.testing.assert_close(alpha.square(), ddim.alphas_cumprod[[0, 999]].double())
    torch.testing.assert_close(alpha.square() + sigma.square(), torch.ones(2, dtype=torch.float64))
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(4)
    fraction, alpha, sigma = noise_levels(flow, flow.timesteps[:1])
    torch.testing.assert_close(sigma, flow.sigmas[:1].double())
    torch.testing.assert_close(alpha, 1 - sigma)
    assert prediction_type(flow) == "flow" and prediction_type(ddim) == "epsilon"


def test_bad_schedulers_and_ranges_are_refused():
    with pytest.raises(TypeError, match=r"Gaussian noise path.*ScoreSdeVeScheduler"):
        check_scheduler(ScoreSdeVeScheduler())
    with pytest.raises(ValueError, match="prediction_type='nonsense'"):
        check_scheduler(DDIMScheduler(prediction_type="nonsense"))
    assert check_range((0.2, 0.8)) == (0.2, 0.8)
    with pytest.raises(ValueError, match=r"active_range must satisfy 0 ≤ t_lo < t_hi ≤ 1.*\(0.8, 0.2\)"):
        check_range((0.8, 0.2))
    with pytest.raises(ValueError, match="must be a pair"):
        check_range(0.5)
