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

    Args:
        tau: temperature ``τ > 0`` of the squared-distance kernel.

    Example:
        >>> import torch, atomgen
        >>> atomgen.DispersiveLoss(tau=0.5)(torch.zeros(4, 8)).loss   # identical samples: log 1
        tensor(0.)
    """

    def __init__(self, tau: float = 0.5):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = tau

    def forward(self, features: torch.Tensor) -> DispersiveOutput:
        if features.ndim < 2:
            raise ValueError(f"features must have a batch dimension, got shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise FloatingPointError("DispersiveLoss received non-finite activations (NaN or inf)")
        z = features.flatten(1).to(torch.promote_types(features.dtype, torch.float32))
        squared = torch.cdist(z, z).square()
        logits = -squared / self.tau
        batch = z.shape[0]
        per_sample = torch.logsumexp(logits, dim=1) - math.log(batch)
        loss = torch.logsumexp(logits.flatten(), dim=0) - 2 * math.log(batch)
        return DispersiveOutput(loss=loss, per_sample=per_sample)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
