"""The scheduler arithmetic every sampling-time method shares: noise levels and prediction types.

A denoiser call at timestep ``t`` sees ``z_t = α_t x_0 + σ_t ε`` and predicts, in the parameterisation
its scheduler names (:func:`prediction_type`), one of

- ``"epsilon"``: ``ε̂``;
- ``"v_prediction"``: ``v = α_t ε − σ_t x_0``;
- ``"sample"``: ``x̂_0``;
- ``"flow"``: the velocity ``v = ε − x_0`` of a rectified flow ``z_σ = (1 − σ) x_0 + σ ε`` (α = 1 − σ).

:func:`noise_levels` reads ``(τ, α_t, σ_t)`` off the scheduler, and :func:`to_x0`, :func:`from_x0`,
:func:`to_epsilon` and :func:`epsilon_change` convert between the parameterisations. Each conversion is
affine in the prediction at a fixed ``z_t``, so a combination whose weights sum to one (classifier-free
guidance's ``u + w (c − u)``) commutes with it.
"""

from __future__ import annotations

from typing import Any

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
# Where atom guidance is on by default: the noisier 60 % of the trajectory, where diversity is decided.
DEFAULT_ACTIVE_RANGE = (0.4, 1.0)


def noise_levels(scheduler: Any, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(τ, α_t, σ_t)`` of the Gaussian path ``z_t = α_t x_0 + σ_t ε`` at the denoiser's timesteps ``t``.

    ``τ`` is the position on the trajectory (1 = pure noise). Variance-preserving schedulers
    (``alphas_cumprod``): ``τ = t / (T − 1)``, and fractional timesteps (Euler-type schedulers)
    interpolate ``σ_t / α_t = √((1 − ᾱ_t) / ᾱ_t)`` linearly in ``t``, as those schedulers do. Flow
    matching (rectified flow, :func:`is_flow_matching`): ``z_σ = (1 − σ) x_0 + σ ε``, so ``α = 1 − σ``
    and ``τ = σ``, read from the timestep by :func:`flow_sigma`.

    Args:
        scheduler: a diffusers scheduler (:func:`check_scheduler` says which).
        timestep: the timesteps the denoiser received, any shape.

    Returns:
        Three float64 tensors on the CPU, flattened.
    """
    if is_flow_matching(scheduler):
        sigma = flow_sigma(scheduler, timestep)
        return sigma, 1.0 - sigma, sigma
    alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    last = alphas_cumprod.numel() - 1
    ratios = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()  # σ_t / α_t
    t = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten().clamp(0, last)
    low = t.floor().long()
    ratio = torch.lerp(ratios[low], ratios[(low + 1).clamp_max(last)], t - low)
    alpha = (1.0 + ratio.square()).rsqrt()
    return t / last, alpha, ratio * alpha


def is_flow_matching(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples a rectified flow: diffusers' ``FlowMatch*`` schedulers, and the
    multistep solvers configured for it (``prediction_type="flow_prediction"``, as Sana's)."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return True
    return getattr(scheduler.config, "prediction_type", None) == "flow_prediction"


def flow_sigma(scheduler: Any, timestep: torch.Tensor) -> torch.Tensor:
    """``σ`` of a flow-matching denoiser call from its timestep, float64 on the CPU.

    Flow schedulers hold ``timesteps = σ · T`` (``T = num_train_timesteps``). Most pipelines pass that to
    the denoiser (Stable Diffusion 3, Sana); Flux, Qwen-Image and others pass ``σ`` itself
    (``timestep / 1000``) and the transformer scales it back. Which of the two a call used is read off
    the scheduler's current timesteps: the reading under which ``t`` lies closer to one of them.
    """
    train_steps = float(scheduler.config.num_train_timesteps)
    t = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten()
    steps = getattr(scheduler, "timesteps", None)
    if isinstance(steps, torch.Tensor) and steps.numel():
        steps = steps.detach().to("cpu", torch.float64).flatten()
        as_steps = (t[:, None] - steps).abs().amin(dim=1)
        as_sigma = (t[:, None] * train_steps - steps).abs().amin(dim=1)
        is_sigma = as_sigma < as_steps
    else:  # no sampling loop has set the timesteps: a timestep above 1 cannot be a σ
        is_sigma = t <= 1.0
    return torch.where(is_sigma, t, t / train_steps).clamp(0.0, 1.0)


def prediction_type(scheduler: Any) -> str:
    """What the denoiser predicts: one of :data:`PREDICTION_TYPES` (``"flow"``: the velocity
    ``v = ε − x_0`` of a rectified flow, whatever the scheduler calls it).

    Raises:
        ValueError: the scheduler's ``prediction_type`` is none of them.
    """
    if is_flow_matching(scheduler):
        return "flow"
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"{type(scheduler).__name__} has prediction_type={kind!r}; sampling-time methods support "
            f"{PREDICTION_TYPES}"
        )
    return kind


def check_scheduler(scheduler: Any) -> str:
    """The scheduler's :func:`prediction_type`, once it is known to have a Gaussian noise path.

    Raises:
        TypeError: neither variance-preserving (``alphas_cumprod``) nor flow matching.
    """
    if not is_flow_matching(scheduler) and not isinstance(
        getattr(scheduler, "alphas_cumprod", None), torch.Tensor
    ):
        raise TypeError(
            f"sampling-time guidance needs a scheduler with a Gaussian noise path: a variance-preserving "
            f"one (alphas_cumprod: DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler…) or flow "
            f"matching (FlowMatchEulerDiscreteScheduler…); got {type(scheduler).__name__}"
        )
    return prediction_type(scheduler)


def check_range(value: tuple[float, float], name: str = "active_range") -> tuple[float, float]:
    """``value`` as a pair ``(τ_lo, τ_hi)`` of trajectory fractions with ``0 ≤ τ_lo < τ_hi ≤ 1``.

    Raises:
        ValueError: not a pair of numbers, or out of order.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (t_lo, t_hi), got {value!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(
            f"{name} must satisfy 0 ≤ t_lo < t_hi ≤ 1 (fractions of the trajectory, 1 = pure noise); "
            f"got {value!r}"
        )
    return low, high


# --- Conversions between parameterisations (α, σ broadcast against the prediction) ----------------


def to_x0(
    prediction: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, kind: str
) -> torch.Tensor:
    """``x̂_0`` from a prediction of kind ``kind`` at ``z_t = sample``."""
    if kind == "epsilon":
        return (sample - sigma * prediction) / alpha
    if kind == "v_prediction":  # v = α ε − σ x_0, α² + σ² = 1  ⇒  x_0 = α z_t − σ v
        return alpha * sample - sigma * prediction
    if kind == "flow":  # α = 1 − σ and v = ε − x_0  ⇒  x_0 = z_σ − σ v
        return sample - sigma * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"unknown prediction type {kind!r}; one of {PREDICTION_TYPES}")


def from_x0(
    x0: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, kind: str
) -> torch.Tensor:
    """The prediction of kind ``kind`` whose ``x̂_0`` is ``x0`` at ``z_t = sample`` (needs ``σ > 0``
    unless ``kind == "sample"``); the inverse of :func:`to_x0`."""
    if kind == "sample":
        return x0
    eps = (sample - alpha * x0) / sigma
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return alpha * eps - sigma * x0
    if kind == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction type {kind!r}; one of {PREDICTION_TYPES}")


def to_epsilon(
    prediction: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, kind: str
) -> torch.Tensor:
    """``ε̂`` from a prediction of kind ``kind`` at ``z_t = sample``."""
    if kind == "epsilon":
        return prediction
    if kind == "v_prediction":  # ε = α v + σ z_t
        return alpha * prediction + sigma * sample
    if kind == "flow":  # ε = z_σ + (1 − σ) v
        return sample + alpha * prediction
    if kind == "sample":  # ε = (z_t − α x̂_0) / σ
        return (sample - alpha * prediction) / sigma.clamp_min(1e-8)
    raise ValueError(f"unknown prediction type {kind!r}; one of {PREDICTION_TYPES}")


def epsilon_change(
    delta_eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, kind: str
) -> torch.Tensor:
    """The change of a variance-preserving prediction of kind ``kind`` that a change ``Δε`` of ``ε̂`` makes
    at a fixed ``z_t``: ``Δv = Δε / α``, ``Δx̂_0 = −σ Δε / α``."""
    if kind == "epsilon":
        return delta_eps
    if kind == "v_prediction":
        return delta_eps / alpha.clamp_min(1e-8)
    if kind == "sample":
        return -delta_eps * sigma / alpha.clamp_min(1e-8)
    raise ValueError(f"a change of ε̂ has no fixed-z_t form for prediction type {kind!r}")


__all__ = [
    "DEFAULT_ACTIVE_RANGE",
    "PREDICTION_TYPES",
    "check_range",
    "check_scheduler",
    "epsilon_change",
    "flow_sigma",
    "from_x0",
    "is_flow_matching",
    "noise_levels",
    "prediction_type",
    "to_epsilon",
    "to_x0",
]
