"""Attribution faithfulness (method.md §9): deletion and insertion curves, the learned importances
against the standard saliency baselines at the same site, and attribution pictures.

**Curves.** Each atom's particles are ranked by an attribution (the learned importance ``s`` or a
baseline). Deletion: for fractions f, replace the top-f particles of every atom with that atom's *mean
particle* (the masking reference) and measure the relative drop of each atom's mean distance ``d̄_A =
mean_{B≠A} d̄_AB`` to the other atoms (method.md §4). Insertion: start from the fully masked batch (every
particle replaced by its atom's mean particle) and put the top-f particles back; the curve is the
recovery ``(d̄_A − d̄_A^masked) / d̄_A^intact``. Both curves start at 0 and end at the same value (the
drop of the fully masked batch), both are fractions of the intact distance, and for both a higher area
means a more faithful ranking: the particles it puts first are the ones that set the atoms apart. Every
area is reported against random orders on the same batch.

**Weighting.** The atom distance ``d̄_AB`` weights each particle pair by the learned importances
(``weighting="learned"``, method.md §4), so the learned ranking is part of the function it is scored on.
``weighting="uniform"`` scores every method on the distance with every particle weighted 1 (the same
module without its role head: ``learn_roles=False``), which the role head cannot shape: whether the
particles ranked first set the samples apart in the features themselves.

Every atom is masked at once (the batch is degraded evenly). Masking one atom against intact others
would compare it with the others' important particles, which its mean particle need not resemble.

**Baselines** (:func:`particle_attributions`), computed on the particles the module sees (after pooling
and patching), scored by the same curves: the particle's feature norm, gradient × activation and
integrated gradients of the atom distance, and random.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from atomgen import AtomSeparation

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTION_METHODS",
    "WEIGHTINGS",
    "AttributionFaithfulness",
    "attribution_faithfulness",
    "attribution_maps",
    "compare_attributions",
    "particle_attributions",
    "save_attribution_grid",
]

ATTRIBUTION_METHODS = (
    "importance",
    "feature_norm",
    "gradient_x_activation",
    "integrated_gradients",
    "random",
)
WEIGHTINGS = ("learned", "uniform")  # what weights the particles of the distance the curves measure
MASKING_REFERENCE = "mean particle"  # what a deleted (or not yet inserted) particle is replaced with


@dataclass(frozen=True)
class AttributionFaithfulness:
    """Deletion and insertion curves of one ranking and of random orders, and the areas under them.

    The ``*_importance`` names predate the baselines: they hold the curves of the ranking scored,
    ``method`` (the learned importance by default).

    Attributes:
        fractions: deleted (or inserted) fraction of each atom's particles.
        drop_importance: deletion curve, the mean relative drop of d̄ when deleting in the ranking's order.
        drop_random: the same for random orders (mean over ``num_random`` orders).
        auc_importance, auc_random: trapezoidal areas under the two deletion curves (higher = faster drop).
        gain: ``auc_importance − auc_random`` (> 0: the ranking beats random on deletion).
        recovery_importance: insertion curve, the mean recovery of d̄ (as a fraction of the intact d̄)
            when inserting in the ranking's order into the fully masked batch.
        recovery_random: the same for random orders.
        insertion_auc_importance, insertion_auc_random: areas under the two insertion curves (higher =
            faster recovery).
        insertion_gain: ``insertion_auc_importance − insertion_auc_random``.
        method: the ranking scored: a name of :data:`ATTRIBUTION_METHODS`, or ``"scores"`` when given.
        reference: what masked particles are replaced with (the atom's mean particle).
        weighting: the distance measured, one of :data:`WEIGHTINGS` (see the module docstring).
    """

    fractions: list[float]
    drop_importance: list[float]
    drop_random: list[float]
    auc_importance: float
    auc_random: float
    gain: float
    recovery_importance: list[float]
    recovery_random: list[float]
    insertion_auc_importance: float
    insertion_auc_random: float
    insertion_gain: float
    method: str
    reference: str = MASKING_REFERENCE
    weighting: str = "learned"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the batch as the module sees it --------------------------------------------------------------------


class _Batch:
    """A batch tokenised once, with what every curve and gradient needs.

    Attributes:
        particles: ``(B, n, d)`` after pooling and patching, as the module sees them; valid: ``(B, n)``.
        mean_particle: each atom's mean valid particle ``(B, 1, d)``, the masking reference.
        intact, masked: ``d̄_A`` of the intact and of the fully masked batch, ``(B,)`` in float64.
        measure: the module whose ``d̄`` the curves and gradients take: ``separation`` itself, or for
            ``weighting="uniform"`` the same module with every particle a proton (``s ≡ 1``).
    """

    def __init__(
        self,
        separation: AtomSeparation,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        caller: str,
        weighting: str = "learned",
    ) -> None:
        if features.ndim < 2 or features.shape[0] < 2:
            raise ValueError(
                f"{caller} needs a batch of at least 2 atoms (samples), got features of shape "
                f"{tuple(features.shape)}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.separation, self.weighting = separation.eval(), weighting
        self.measure = self.separation
        if weighting == "uniform":  # the same tokens, geometry and kernel; no role head
            uniform = type(separation).from_config(separation.config, learn_roles=False)
            self.measure = uniform.to(features.device).eval()  # a projection is redrawn from its seed
        self.features = features.detach().to(torch.promote_types(features.dtype, torch.float32))
        self.particles, self.valid, self.grid = separation.tokenize(self.features, mask)
        self.patch = separation.config.patch_size
        counts = self.valid.sum(1).clamp_min(1)[:, None]
        self.mean_particle = ((self.particles * self.valid[..., None]).sum(1) / counts)[:, None, :]
        self.intact = self.distance(self.particles)
        self.masked = self.distance(self.replace(self.valid > 0))

    def rebuild(self, particles: torch.Tensor) -> torch.Tensor:
        """Particles ``(B, n, d)`` back into the layout the module tokenises (inverse of unfold)."""
        if self.features.ndim == 4:
            size = (self.grid[0] * self.patch, self.grid[1] * self.patch)
            return F.fold(particles.transpose(1, 2), size, kernel_size=self.patch, stride=self.patch)
        if self.features.ndim == 3:
            return particles
        return particles[:, 0]

    def distance(self, particles: torch.Tensor) -> torch.Tensor:
        """``d̄_A = mean_{B≠A} d̄_AB`` per atom (method.md §4), in one pass; differentiable."""
        distance = self.measure(self.rebuild(particles), mask=self.valid).atom_distance.double()
        count = distance.shape[0]
        off_diagonal = 1.0 - torch.eye(count, dtype=distance.dtype, device=distance.device)
        return (distance * off_diagonal).sum(1) / (count - 1)

    def replace(self, where: torch.Tensor) -> torch.Tensor:
        """The particles, those at ``where`` ``(B, n)`` replaced by their atom's mean particle."""
        return torch.where(where[..., None], self.mean_particle.expand_as(self.particles), self.particles)

    def gradient(self, particles: torch.Tensor) -> torch.Tensor:
        """``∂D/∂h`` of the summed atom distance ``D = Σ_A d̄_A`` at ``particles``: ``(B, n, d)``."""
        with torch.enable_grad():
            particles = particles.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.distance(particles).sum(), particles)
        return grad


# --- attributions -----------------------------------------------------------------------------------------


@torch.no_grad()
def particle_attributions(
    separation: AtomSeparation,
    features: torch.Tensor,
    method: str,
    *,
    mask: torch.Tensor | None = None,
    steps: int = 32,
    seed: int = 0,
    weighting: str = "learned",
) -> torch.Tensor:
    """Per-particle attribution scores ``(B, n)`` at the separation site, higher = more responsible.

    ``n`` is the module's particle count (after pooling and patching), as in ``AtomOutput.importance``.
    The gradient methods attribute the batch's summed atom distance ``D = Σ_A d̄_A`` (method.md §4), the
    quantity the faithfulness curves measure, so they are scored on their own target; the per-atom energy
    ``e_A`` is not used, because under the default Gaussian kernel it saturates for well-separated atoms
    (``k(u) → 0``, and its gradient with it) while ``d̄`` keeps growing with every distance. Since
    ``d̄_AB = d̄_BA``, the gradient of ``D`` on atom A's particles is ``2 ∂d̄_A/∂h^A``: within an atom,
    the order is that of the atom's own distance.

    Methods:
        ``"importance"``: the learned ``s = 1 − r^neutron`` (method.md §3).
        ``"feature_norm"``: ``‖h_i‖``, the norm of the particle.
        ``"gradient_x_activation"``: ``∂D/∂h_i · (h_i − h̄)``, the activation measured from the masking
            reference ``h̄`` (the atom's mean particle): the first-order estimate of the drop of ``D`` when
            ``h_i`` is masked. The plain ``∂D/∂h_i · h_i`` is useless on the default sphere geometry: ``D``
            does not depend on a particle's scale, so it vanishes (Euler) up to the role norm's ε.
        ``"integrated_gradients"``: ``(h_i − h̄) · mean_k ∂D/∂h_i`` at ``h̄ + α_k (h − h̄)``, midpoints
            ``α_k = (k + ½)/steps``, every particle of every atom moving along the path at once, from the
            fully masked batch. Completeness: the scores sum to ``D(intact) − D(masked)`` over the whole
            batch (not per atom: atoms interact), up to the quadrature error.
        ``"random"``: uniform draws from ``seed``.

    Args:
        separation: the (trained) separation module.
        features: a batch of site activations ``(B, C, H, W)``, ``(B, n, d)`` or ``(B, d)``, ``B ≥ 2``.
        method: one of :data:`ATTRIBUTION_METHODS`.
        mask: optional ``(B, n)`` particle mask; masked (padding) particles score 0.
        steps: integration steps of ``"integrated_gradients"``.
        seed: seed of ``"random"``.
        weighting: the distance ``D`` the gradient methods attribute, one of :data:`WEIGHTINGS`.
    """
    _check_method(method)
    batch = _Batch(separation, features, mask, "particle_attributions", weighting)
    return _attributions(batch, method, steps, seed)


def _attributions(batch: _Batch, method: str, steps: int, seed: int) -> torch.Tensor:
    _check_method(method)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    particles, offset = batch.particles, batch.particles - batch.mean_particle
    if method == "importance":
        scores = batch.separation(batch.rebuild(particles), mask=batch.valid).importance
    elif method == "feature_norm":
        scores = particles.norm(dim=-1)
    elif method == "gradient_x_activation":
        scores = (batch.gradient(particles) * offset).sum(-1)
    elif method == "integrated_gradients":
        path_grad = torch.zeros_like(particles)
        for k in range(steps):
            path_grad += batch.gradient(batch.mean_particle + (k + 0.5) / steps * offset)
        scores = (path_grad / steps * offset).sum(-1)
    else:  # "random"
        generator = torch.Generator().manual_seed(seed)
        scores = torch.rand(batch.valid.shape, generator=generator, dtype=particles.dtype).to(
            particles.device
        )
    return torch.where(batch.valid > 0, scores, 0.0)


def _check_method(method: str) -> None:
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"method must be one of {ATTRIBUTION_METHODS}, got {method!r}")


# --- faithfulness curves --------------------------------------------------------------------------------


@torch.no_grad()
def attribution_faithfulness(
    separation: AtomSeparation,
    features: torch.Tensor,
    *,
    method: str | None = None,
    scores: torch.Tensor | None = None,
    fractions: list[float] | None = None,
    num_random: int = 8,
    seed: int = 0,
    mask: torch.Tensor | None = None,
    steps: int = 32,
    weighting: str = "learned",
) -> AttributionFaithfulness:
    """Deletion and insertion curves of one attribution against random orders (see the module docstring).

    Args:
        separation: the (trained) separation module.
        features: a batch of site activations ``(B, C, H, W)``, ``(B, n, d)`` or ``(B, d)``, ``B ≥ 2``.
        method: the attribution to score, one of :data:`ATTRIBUTION_METHODS`; default ``"importance"``.
        scores: or any ``(B, n)`` attribution, finite on valid particles (higher = ranked first), e.g.
            from :func:`particle_attributions` or a method of your own; not together with ``method``.
        fractions: deleted (inserted) fractions in [0, 1] (default 0, 0.1, …, 1).
        num_random: random orders to average for the reference curves.
        seed: seed of the random orders (a ``"random"`` method draws from ``seed + 1``).
        mask: optional ``(B, n)`` particle mask (masked particles are never deleted nor inserted).
        steps: integration steps of ``"integrated_gradients"``.
        weighting: the distance the curves measure (and the gradient methods attribute): ``"learned"``
            (the module's importance-weighted ``d̄``) or ``"uniform"`` (every particle weighted 1).
    """
    if method is not None and scores is not None:
        raise ValueError("pass either method or scores to attribution_faithfulness, not both")
    batch = _Batch(separation, features, mask, "attribution_faithfulness", weighting)
    if scores is None:
        name = method or "importance"
        _check_method(name)
        scores = _attributions(batch, name, steps, seed + 1)
    else:
        name = "scores"
        _check_scores(scores, batch)
    return _score(batch, {name: scores}, fractions, num_random, seed)[name]


@torch.no_grad()
def compare_attributions(
    separation: AtomSeparation,
    features: torch.Tensor,
    *,
    methods: Sequence[str] = ("importance", "feature_norm", "gradient_x_activation", "integrated_gradients"),
    fractions: list[float] | None = None,
    num_random: int = 8,
    seed: int = 0,
    mask: torch.Tensor | None = None,
    steps: int = 32,
    weighting: str = "learned",
) -> dict[str, AttributionFaithfulness]:
    """:func:`attribution_faithfulness` of several methods on one batch, against the same random orders.

    Every result carries its method's deletion and insertion areas and their gains over random
    (``gain``, ``insertion_gain``). Arguments as in :func:`attribution_faithfulness`.

    Example:
        >>> import torch, atomgen
        >>> from atomgen.eval import compare_attributions
        >>> sep = atomgen.AtomSeparation(dim=4)
        >>> results = compare_attributions(sep, torch.randn(3, 4, 4, 4), fractions=[0, 0.5, 1], steps=4)
        >>> sorted(results), results["feature_norm"].reference
        (['feature_norm', 'gradient_x_activation', 'importance', 'integrated_gradients'], 'mean particle')
    """
    if not methods:
        raise ValueError("methods must name at least one attribution method")
    for method in methods:  # before any work
        _check_method(method)
    batch = _Batch(separation, features, mask, "compare_attributions", weighting)
    rankings = {method: _attributions(batch, method, steps, seed + 1) for method in methods}
    return _score(batch, rankings, fractions, num_random, seed)


def _check_scores(scores: torch.Tensor, batch: _Batch) -> None:
    expected = tuple(batch.valid.shape)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"scores must be a tensor of shape (B, n) = {expected}, one per particle as the module "
            f"tokenises the features (AtomOutput.importance has it), got {shape}"
        )
    if not torch.isfinite(scores.to(batch.valid.device)[batch.valid > 0]).all():
        raise ValueError("scores must be finite on every valid particle")


def _score(
    batch: _Batch,
    rankings: dict[str, torch.Tensor],
    fractions: list[float] | None,
    num_random: int,
    seed: int,
) -> dict[str, AttributionFaithfulness]:
    """Curves of each ranking and of ``num_random`` random orders, and their areas."""
    fractions = [round(0.1 * i, 10) for i in range(11)] if fractions is None else sorted(fractions)
    if len(fractions) < 2 or fractions[0] < 0 or fractions[-1] > 1:
        raise ValueError(f"fractions must be at least two values in [0, 1], got {fractions}")
    if num_random < 1:
        raise ValueError(f"num_random must be a positive integer, got {num_random}")
    generator = torch.Generator().manual_seed(seed)
    random = [
        _curves(batch, torch.rand(batch.valid.shape, generator=generator), fractions)
        for _ in range(num_random)
    ]
    drop_random, recovery_random = (np.mean(curves, axis=0) for curves in zip(*random, strict=True))
    auc_random, insertion_auc_random = _area(drop_random, fractions), _area(recovery_random, fractions)
    results = {}
    for name, scores in rankings.items():
        drop, recovery = _curves(batch, scores, fractions)
        auc, insertion_auc = _area(drop, fractions), _area(recovery, fractions)
        results[name] = AttributionFaithfulness(
            fractions=list(fractions),
            drop_importance=drop.tolist(),
            drop_random=drop_random.tolist(),
            auc_importance=auc,
            auc_random=auc_random,
            gain=auc - auc_random,
            recovery_importance=recovery.tolist(),
            recovery_random=recovery_random.tolist(),
            insertion_auc_importance=insertion_auc,
            insertion_auc_random=insertion_auc_random,
            insertion_gain=insertion_auc - insertion_auc_random,
            method=name,
            weighting=batch.weighting,
        )
    return results


def _curves(batch: _Batch, scores: torch.Tensor, fractions: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Deletion (relative drop) and insertion (relative recovery) curves of ranking by ``scores``."""
    valid = batch.valid > 0
    # Rank of each particle in its atom: valid particles first, by decreasing score; padding last.
    keys = torch.where(valid, scores.to(batch.valid.device, torch.float64), -torch.inf)
    order = torch.argsort(keys, dim=1, descending=True)
    rank = torch.empty_like(order)
    atoms, n = order.shape
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(atoms, n))
    counts, scale = batch.valid.sum(1), batch.intact.clamp_min(1e-12)
    drops, recoveries = [], []
    for fraction in fractions:
        top = (rank < torch.round(fraction * counts)[:, None]) & valid
        drops.append(float(((batch.intact - batch.distance(batch.replace(top))) / scale).mean()))
        inserted = batch.distance(batch.replace(valid & ~top))
        recoveries.append(float(((inserted - batch.masked) / scale).mean()))
    return np.array(drops), np.array(recoveries)


def _area(values: np.ndarray, fractions: list[float]) -> float:
    """Trapezoidal area under ``values`` over ``fractions``."""
    x = np.asarray(fractions, dtype=np.float64)
    return float(((values[1:] + values[:-1]) * np.diff(x)).sum() / 2)


# --- pictures -------------------------------------------------------------------------------------------


def attribution_maps(importance: torch.Tensor, grid: tuple[int, ...], size: tuple[int, int]) -> torch.Tensor:
    """Importances ``(B, n)`` on an ``(H', W')`` particle grid, upsampled bilinearly to ``size``: ``(B, 1, H, W)``."""
    if len(grid) != 2:
        raise ValueError(f"attribution maps need a 2-d particle grid, got {grid} (token or vector sites)")
    maps = importance.detach().float().reshape(-1, 1, *grid)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def _heat(values: torch.Tensor) -> torch.Tensor:
    """A black → red → yellow → white ramp ("hot") of values in [0, 1]: ``(B, 1, H, W)`` → ``(B, 3, H, W)``."""
    return torch.cat(
        [(3 * values).clamp(0, 1), (3 * values - 1).clamp(0, 1), (3 * values - 2).clamp(0, 1)], 1
    )


def save_attribution_grid(
    images: torch.Tensor,
    importance: torch.Tensor,
    grid: tuple[int, ...],
    path: str | Path,
    *,
    alpha: float = 0.6,
    min_side: int = 64,
    nrow: int = 8,
) -> Path:
    """A PNG of each image beside its importance map laid over it.

    Args:
        images: ``(B, C, H, W)`` in [0, 1].
        importance: ``(B, n)`` from :class:`~atomgen.AtomOutput` (``s = 1 − r^neutron``).
        grid: the particle grid ``(H', W')`` (``AtomOutput.grid``).
        path: output PNG.
        alpha: opacity of the heat map.
        min_side: small images are enlarged (nearest neighbour) to at least this side.
        nrow: image/overlay pairs per row.
    """
    from torchvision.utils import save_image

    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, int(np.ceil(min_side / min(images.shape[-2:]))))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    heat = _heat(attribution_maps(importance.cpu(), grid, tuple(images.shape[-2:])))
    overlay = (1 - alpha) * images + alpha * heat
    tiles = torch.stack([images, overlay], 1).flatten(0, 1)  # image, overlay, image, overlay, ...
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tiles, path, nrow=2 * nrow, padding=2, pad_value=1.0)
    return path
