"""Energy guidance: ε̂ ← ε̂ + γ(t) σ_t ∇_{z_t} E, on the shared :class:`~.denoiser_hook.DenoiserHook`.

With ``normalize=True`` the correction is instead ``Δε = γ(t) ‖ε̂‖ ∇E / ‖∇E‖`` per sample, so that one
``γ`` (a fraction of the noise prediction's norm) transfers across models, sites and energies.

Atom guidance (:mod:`.atom_guidance`) and Particle Guidance (:mod:`.particle_guidance`) differ only in their
energy ``E``; both subclass :class:`EnergyGuidance` and implement :meth:`EnergyGuidance.prepare_energy`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from .denoiser_hook import DenoiserCall, DenoiserHook, add_to_prediction, prediction_tensor
from .noise import DEFAULT_ACTIVE_RANGE, check_range, epsilon_change, prediction_type, to_epsilon


class EnergyGuidance(DenoiserHook):
    """Guidance by the gradient of an energy ``E`` between the samples of a batch (method.md §7–8).

    At every denoiser call inside the active range the noise prediction is corrected,
    ``ε̂ ← ε̂ + γ(t) · σ_t · ∇_{z_t} E``, and the correction is converted for v- and sample-prediction
    models through ``scheduler.config.prediction_type`` (``Δv = Δε / α_t``, ``Δx̂_0 = −σ_t Δε / α_t``).
    Under flow matching the velocity is corrected, ``v̂ ← v̂ + γ(t) · σ · ∇_{z_σ} E``
    (:meth:`_velocity_correction` derives it).
    Lowering ``E`` pushes the samples apart. Under classifier-free guidance the energy is taken on the
    conditional half and the same correction is added to both halves, so the guided output moves by
    exactly that correction. The energy couples only the samples of one group
    (:attr:`~.denoiser_hook.DenoiserCall.groups`). A subclass implements :meth:`prepare_energy`, which
    sets :attr:`energy_grad` (the gradient for the guided rows) before or during the forward pass.

    With ``normalize=True`` only the direction of the gradient is kept, and its length is a fraction
    of the noise prediction's: per guided sample ``A``,

        Δε_A = γ(t) · ‖ε̂_A‖ · g_A / ‖g_A‖,        g_A = ∇_{z_t,A} E

    where ``ε̂_A`` is the model's noise prediction of that row (v- and sample-predictions converted to
    ``ε̂`` first; under classifier-free guidance, the conditional half's). The raw gradient's scale
    depends on the model, the site, the energy and ``σ_t``; the normalised ``γ`` does not, so one value
    transfers between them. The correction is then converted to the model's parameterisation as above.

    Args:
        pipe: the pipeline (see :class:`DenoiserHook`).
        scale: ``γ``; 0 leaves the pipeline's outputs bit-identical to the stock pipeline's, and a
            negative value pulls the samples together instead.
        active_range: ``(t_lo, t_hi)``, the part of the trajectory where ``γ(t) = scale``, as fractions
            ``τ = t / (T − 1)`` of the training timesteps (``σ`` under flow matching; 1 = pure noise); 0
            outside. ``None``: on
            everywhere, unless a subclass defines its own rule.
        normalize: whether ``γ`` is a fraction of ``‖ε̂‖`` (the normalised correction above) rather than
            a multiplier of ``σ_t ∇E``. ``False`` keeps the unnormalised formula of method.md §7.
        groups: the group of each sample (see :class:`~.denoiser_hook.DenoiserHook`); default: by
            conditioning.

    Attributes:
        gamma: ``γ(t)`` per guided row of the last guided call (``None`` before the first).
        energy_grad: ``∇_{z_t} E`` for the guided rows of the call being guided, once computed;
            ``None`` again when its correction is applied.
    """

    #: the keyword of ``scale`` in the subclass's signature, for messages
    scale_name = "scale"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        scale: float,
        active_range: tuple[float, float] | None = DEFAULT_ACTIVE_RANGE,
        normalize: bool = False,
        groups: Sequence[int] | torch.Tensor | None = None,
    ):
        if not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"{self.scale_name} must be a finite number, got {scale!r}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        self.scale = float(scale)
        self.normalize = normalize
        self.active_range = None if active_range is None else check_range(active_range)
        self.gamma: torch.Tensor | None = None
        self.energy_grad: torch.Tensor | None = None
        super().__init__(pipe, groups=groups)

    def prepare_energy(self, call: DenoiserCall) -> None:
        raise NotImplementedError

    def is_on(self, call: DenoiserCall) -> torch.Tensor:
        """Where ``γ(t)`` is on, per row: inside the active range (everywhere without one)."""
        if self.active_range is None:
            return torch.ones_like(call.fraction, dtype=torch.bool)
        low, high = self.active_range
        return (call.fraction >= low) & (call.fraction <= high)

    def where(self) -> str:
        return f"for τ in active_range={self.active_range}"

    def is_enabled(self) -> bool:
        return self.scale != 0.0

    def before_forward(self, call: DenoiserCall) -> bool:
        gamma = self.scale * self.is_on(call)[call.guided].double()
        if not gamma.any():
            return False
        self.gamma, self.energy_grad = gamma, None
        self.prepare_energy(call)
        return True

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        grad, self.energy_grad = self.energy_grad, None
        if output is None:  # the forward pass raised; nothing to correct
            return None
        if grad is None:
            raise RuntimeError(f"{type(self).__name__} computed no energy gradient at this call")
        grad = grad.to(call.sample.dtype)
        parameterisation = prediction_type(self.pipe.scheduler)
        if parameterisation == "flow":
            delta = self._velocity_correction(call, output, grad)
        else:
            delta = self._noise_correction(call, output, grad, parameterisation)
        if call.doubled:  # the same correction for the unconditional and the conditional half
            delta = torch.cat([delta, delta])
        return add_to_prediction(output, delta)

    def _noise_correction(
        self, call: DenoiserCall, output: Any, grad: torch.Tensor, parameterisation: str
    ) -> torch.Tensor:
        """``Δε`` (variance-preserving schedulers), in the model's own parameterisation."""
        sigma, alpha = call.sigma[call.guided], call.alpha[call.guided]
        if self.normalize:  # Δε = γ(t) ‖ε̂‖ g / ‖g‖, per sample
            eps = self._noise_prediction(call, output, parameterisation)
            delta_eps = _along(grad, call.per_row(self.gamma, grad) * row_norm(eps))
        else:  # §7: Δε = γ(t) σ_t ∇_{z_t} E
            delta_eps = call.per_row(self.gamma * sigma, grad) * grad
        return epsilon_change(
            delta_eps, call.per_row(alpha, grad), call.per_row(sigma, grad), parameterisation
        )

    def _velocity_correction(self, call: DenoiserCall, output: Any, grad: torch.Tensor) -> torch.Tensor:
        """``Δv`` of a rectified flow's velocity (flow-matching schedulers).

        On the path ``z_σ = (1 − σ) x_0 + σ ε`` the model predicts ``v = ε − x_0 = dz/dσ`` and the
        sampler steps ``z_σ' = z_σ + (σ' − σ) v̂``. At fixed ``z_σ``, ``ε = z_σ + (1 − σ) v``, so the
        ε-space correction ``Δε = γ σ ∇E`` would be ``Δv = Δε / (1 − σ)``, which diverges at ``σ = 1``
        where flow samplers start (there ``z = ε``, and a change of ``ε̂`` means nothing). The velocity
        is corrected instead by

            Δv = γ(t) · σ · ∇_{z_σ} E            (normalize=True: Δv = γ(t) ‖v̂‖ g / ‖g‖)

        the ε-space correction weighted by ``α = 1 − σ``, which vanishes at pure noise. A step then moves
        the sample by ``(σ' − σ) Δv = −(σ − σ') γ σ ∇E``: a descent step on ``E`` in proportion to the
        step's length, as the corrected ``ε̂`` gives in variance-preserving sampling. Normalised, ``γ``
        is a fraction of the velocity's norm, as it is of ``‖ε̂‖`` there.
        """
        if self.normalize:
            velocity = prediction_tensor(output)[call.guided, : grad.shape[1]].to(grad.dtype)
            return _along(grad, call.per_row(self.gamma, grad) * row_norm(velocity))
        return call.per_row(self.gamma * call.sigma[call.guided], grad) * grad

    @staticmethod
    def _noise_prediction(call: DenoiserCall, output: Any, parameterisation: str) -> torch.Tensor:
        """``ε̂`` of the guided rows, from the denoiser's prediction in its own parameterisation."""
        z_t = call.sample[call.guided].detach()
        prediction = prediction_tensor(output)[call.guided, : z_t.shape[1]].to(z_t.dtype)
        alpha, sigma = call.per_row(call.alpha[call.guided], z_t), call.per_row(call.sigma[call.guided], z_t)
        return to_epsilon(prediction, z_t, alpha, sigma, parameterisation)


def _along(grad: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``length · g / ‖g‖`` per row: the gradient's direction at a given length."""
    return length * grad / row_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each row of ``x`` (over every dimension but the first), shape ``(N, 1, …)``."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


__all__ = ["EnergyGuidance"]
