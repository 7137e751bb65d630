"""Naive reference of method.md §4: materialises every (Bn)² pair; for tests only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_atom_loss(sep, features, mask=None, groups=None):
    """``(loss, parts, energy, atom_distance)`` computed the obvious way, from the module's own tokeniser."""
    cfg = sep.config
    particles, mask, _ = sep.tokenize(features, mask)
    roles = sep._roles(particles, mask)
    q, s = roles[..., 1] - roles[..., 0], 1.0 - roles[..., 2]
    z = particles if sep.projection is None else particles @ sep.projection.to(particles.dtype)
    norms = z.norm(dim=-1)
    if cfg.geometry == "sphere":
        x = z / norms[..., None]
    else:
        x = z / ((norms * mask).sum() / mask.sum().clamp_min(1)).clamp_min(1e-12).detach()
    B = q.shape[0]
    diff = x[:, :, None, None, :] - x[None, None, :, :, :]  # (A, i, B, j, k)
    u = diff.pow(2).sum(-1)  # (A, i, B, j)
    if cfg.kernel == "coulomb":
        k = (u + cfg.epsilon**2) ** -0.5
    else:
        k = torch.exp(-u / (2 * cfg.sigma**2))
    w = q if cfg.mode == "signed" else s
    mm = mask[:, :, None, None] * mask[None, None, :, :]
    pair_w = w[:, :, None, None] * w[None, None, :, :]
    E = (mm * pair_w * k).sum((1, 3)) / mm.sum((1, 3)).clamp_min(1e-12)
    ss = mm * s[:, :, None, None] * s[None, None, :, :]
    dbar = (ss * (u + cfg.epsilon**2).sqrt()).sum((1, 3)) / ss.sum((1, 3)).clamp_min(1e-12)
    alive = mask.sum(1) > 0
    valid = alive[:, None] & alive[None, :] & ~torch.eye(B, dtype=torch.bool)
    if groups is not None:
        valid &= groups[:, None] == groups[None, :]
    P = valid.to(E.dtype)
    npairs = P.sum().clamp_min(1)
    L_sep = (E * P).sum() / npairs
    energy = (E * P).sum(1) / P.sum(1).clamp_min(1)
    C_s = (F.relu(cfg.min_distance - dbar) ** 2 * P).sum() / npairs
    a = alive.to(E.dtype)
    frac = (mask * s).sum(1) / mask.sum(1).clamp_min(1e-12)
    C_p = (F.relu(cfg.min_participation - frac) ** 2 * a).sum() / a.sum().clamp_min(1)
    if cfg.mode == "signed" and cfg.learn_roles:
        net = (mask * q).sum(1) / mask.sum(1).clamp_min(1e-12)
        C_n = (net**2 * a).sum() / a.sum().clamp_min(1)
    else:
        C_n = torch.zeros((), dtype=E.dtype)
    loss = L_sep + cfg.neutrality_weight * C_n + cfg.participation_weight * C_p + cfg.spacing_weight * C_s
    return loss, (L_sep, C_n, C_p, C_s), energy, dbar
