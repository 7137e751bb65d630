"""Dispersive Loss (Wang & He 2025, arXiv 2506.09027), the training-time peer: method.md §8."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DispersiveOutput:
    """``loss``: ``log mean_{i,j} exp(−‖z_i − z_j‖² / τ)`` over the batch (scalar);
    ``per_sample``: ``log mean_j exp(−‖z_i − z_j‖² / τ)`` for each sample ``i``, shape ``(B,)``."""

    loss: torch.Tensor
    per_sample: torch.Tensor


class DispersiveLoss(nn.Module):
    """InfoNCE-style dispersion of a batch's flattened site features, with no positive pairs.

    ``D(z_i, z_j) = ‖z_i − z_j‖² / d`` over the ``d`` flattened feature entries, as in the paper's public
    PyTorch release: without the division by ``d`` raw features of a few hundred dimensions sit so far
    apart that every ``exp(−D/τ)`` underflows and the loss has no gradient (``per_dim=False`` gives the
    plain squared distance of method.md §8).

    Args:
        tau: temperature ``τ > 0``.
        per_dim: divide the squared distance by the feature size ``d``.

    Example:
        >>> import torch, atomgen
        >>> atomgen.DispersiveLoss(tau=0.5)(torch.zeros(4, 8)).loss   # identical samples: log 1
        tensor(0.)
    """

    def __init__(self, tau: float = 0.5, per_dim: bool = True):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau, self.per_dim = tau, per_dim

    def forward(self, features: torch.Tensor) -> DispersiveOutput:
        if features.ndim < 2:
            raise ValueError(f"features must have a batch dimension, got shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise FloatingPointError("DispersiveLoss received non-finite activations (NaN or inf)")
        z = features.flatten(1).to(torch.promote_types(features.dtype, torch.float32))
        # Differences, not the Gram expansion: self-distances come out exactly zero.
        squared = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist").square()
        if self.per_dim:
            squared = squared / z.shape[1]
        logits = -squared / self.tau
        batch = z.shape[0]
        per_sample = torch.logsumexp(logits, dim=1) - math.log(batch)
        loss = torch.logsumexp(logits.flatten(), dim=0) - 2 * math.log(batch)
        return DispersiveOutput(loss=loss, per_sample=per_sample)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, per_dim={self.per_dim}"
