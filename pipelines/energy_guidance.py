"""Energy guidance: ε̂ ← ε̂ + γ(t) σ_t ∇_{z_t} E, on the shared :class:`~.denoiser_hook.DenoiserHook`.

Atom guidance (:mod:`.guidance`) and Particle Guidance (:mod:`.particle_guidance`) differ only in their
energy ``E``; both subclass :class:`EnergyGuidance` and implement :meth:`EnergyGuidance.prepare_energy`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from diffusers import DiffusionPipeline

from .denoiser_hook import (
    DEFAULT_INTERVAL,
    DenoiserCall,
    DenoiserHook,
    add_to_prediction,
    check_interval,
    prediction_type,
)


class EnergyGuidance(DenoiserHook):
    """Guidance by the gradient of an energy ``E`` between the samples of a batch (method.md §7–8).

    At every denoiser call inside the interval the noise prediction is corrected,
    ``ε̂ ← ε̂ + γ(t) · σ_t · ∇_{z_t} E``, and the correction is converted for v- and sample-prediction
    models through ``scheduler.config.prediction_type`` (``Δv = Δε / α_t``, ``Δx̂_0 = −σ_t Δε / α_t``).
    Lowering ``E`` pushes the samples apart. Under classifier-free guidance the energy is taken on the
    conditional half and the same correction is added to both halves, so the guided output moves by
    exactly that correction. A subclass implements :meth:`prepare_energy`, which sets
    ``call.energy_grad`` (the gradient for the guided rows) before or during the forward pass.

    Args:
        pipe: the pipeline (see :class:`DenoiserHook`).
        strength: ``γ``; 0 leaves the pipeline's outputs bit-identical to the stock pipeline's, and a
            negative value pulls the samples together instead.
        interval: ``(t_lo, t_hi)``, the part of the trajectory where ``γ(t) = strength``, as fractions
            ``τ = t / (T − 1)`` of the training timesteps (1 = pure noise); 0 outside. ``None``: on
            everywhere, unless a subclass defines its own rule.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        strength: float,
        interval: tuple[float, float] | None = DEFAULT_INTERVAL,
    ):
        if not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        self.strength = float(strength)
        self.interval = None if interval is None else check_interval(interval)
        super().__init__(pipe)

    def prepare_energy(self, call: DenoiserCall) -> None:
        raise NotImplementedError

    def is_on(self, call: DenoiserCall) -> torch.Tensor:
        """Where ``γ(t)`` is on, per row: inside the interval (everywhere without one)."""
        if self.interval is None:
            return torch.ones_like(call.fraction, dtype=torch.bool)
        low, high = self.interval
        return (call.fraction >= low) & (call.fraction <= high)

    def is_enabled(self) -> bool:
        return self.strength != 0.0

    def before_forward(self, call: DenoiserCall) -> bool:
        strength = self.strength * self.is_on(call)[call.guided].double()
        if not strength.any():
            return False
        call.strength = strength
        self.prepare_energy(call)
        return True

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        if output is None:  # the forward pass raised; nothing to correct
            return None
        if call.energy_grad is None:
            raise RuntimeError(f"{type(self).__name__} computed no energy gradient at this call")
        guided = call.sample[call.guided]
        grad = call.energy_grad.to(guided.dtype)
        sigma, alpha = call.sigma[call.guided], call.alpha[call.guided].clamp_min(1e-8)
        # §7: Δε = γ(t) σ_t ∇_{z_t} E, then to the model's parameterisation.
        delta_eps = call.per_row(call.strength * sigma, grad) * grad
        parameterisation = prediction_type(self.pipe.scheduler)
        if parameterisation == "epsilon":
            delta = delta_eps
        elif parameterisation == "v_prediction":  # v = α ε − σ x_0, ε = α v + σ z_t  ⇒  Δv = Δε / α
            delta = delta_eps / call.per_row(alpha, grad)
        else:  # x̂_0 = (z_t − σ ε̂) / α  ⇒  Δx̂_0 = −σ Δε / α
            delta = -delta_eps * call.per_row(sigma / alpha, grad)
        if call.doubled:  # the same correction for the unconditional and the conditional half
            delta = torch.cat([delta, delta])
        return add_to_prediction(output, delta)


__all__ = ["EnergyGuidance"]
