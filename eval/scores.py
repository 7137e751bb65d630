"""Scores on features (method.md §9): FID, KID, precision/recall/density/coverage, Vendi.

The last of the three steps (features → statistics → scores). Every function takes plain arrays (or a
:class:`~atomgen.eval.statistics.FeatureSet` / :class:`~atomgen.eval.statistics.Statistics`), works in
float64, and raises a clear error when there are too few samples for the score, never returns NaN.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .statistics import FeatureSet, Statistics

logger = logging.getLogger(__name__)

__all__ = [
    "KID",
    "PRDC",
    "fid",
    "frechet_distance",
    "kid",
    "kid_scale",
    "prdc",
    "trace_sqrt_product",
    "vendi",
]

Features = np.ndarray | torch.Tensor | FeatureSet


def _as_features(x: Features, what: str, minimum: int) -> np.ndarray:
    if isinstance(x, FeatureSet):
        x = x.features
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} features must be (N, d), got shape {x.shape}")
    if x.shape[0] < minimum:
        raise ValueError(f"{what} needs at least {minimum} feature vectors, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise FloatingPointError(f"{what} features contain NaN or inf")
    return x


def _as_statistics(x: Statistics | Features, what: str) -> Statistics:
    if isinstance(x, Statistics):
        return x
    if isinstance(x, FeatureSet):
        if len(x) < 2:
            raise ValueError(f"{what}: a covariance needs at least 2 feature vectors, got {len(x)}")
        return x.statistics
    features = _as_features(x, f"{what} (a covariance)", 2)
    return Statistics(features.mean(0), np.cov(features, rowvar=False), features.shape[0])


# --- Fréchet distance -----------------------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues set to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, *, method: str = "auto") -> float:
    """``tr (Σ₁^½ Σ₂ Σ₁^½)^½`` = Σ √λ over the eigenvalues λ of ``Σ₁Σ₂``, from a symmetric matrix.

    Args:
        sigma1, sigma2: symmetric PSD ``(d, d)`` float64 matrices.
        method: ``"cholesky"``: with ``Σ₁ = L Lᵀ``, ``Lᵀ Σ₂ L`` is symmetric and similar to ``Σ₁Σ₂``, so
            one ``eigvalsh`` suffices (needs a positive definite Σ₁ or Σ₂); ``"eigh"``: ``Σ₁^½`` from an
            eigendecomposition, then the eigenvalues of ``Σ₁^½ Σ₂ Σ₁^½`` (any PSD matrices); ``"auto"``:
            Cholesky when either matrix is positive definite, else eigh.
    """
    if method not in ("auto", "cholesky", "eigh"):
        raise ValueError(f"method must be 'auto', 'cholesky' or 'eigh', got {method!r}")
    if method != "eigh":
        for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
            try:
                factor = np.linalg.cholesky(a)
            except np.linalg.LinAlgError:
                continue
            product = factor.T @ b @ factor
            eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
            return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
        if method == "cholesky":
            raise np.linalg.LinAlgError("neither covariance is positive definite; use method='eigh'")
    root1 = _psd_sqrt(sigma1)
    cross = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((cross + cross.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""Fréchet distance between Gaussians, in float64 through a symmetric eigendecomposition.

    ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½``. The cross term comes from the eigenvalues of
    a symmetric PSD matrix similar to ``Σ₁Σ₂`` (:func:`trace_sqrt_product`), so no non-symmetric
    ``sqrtm`` (and no imaginary round-off) is involved.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} and {mu2.shape}, sigma {sigma1.shape} and {sigma2.shape}"
        )
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid(real: Statistics | Features, fake: Statistics | Features) -> float:
    """Fréchet Inception Distance (lower = closer to the real data): Fréchet distance of the statistics.

    Args:
        real, fake: :class:`Statistics`, a :class:`FeatureSet`, or ``(N, d)`` feature arrays (N ≥ 2).
    """
    a, b = _as_statistics(real, "fid real"), _as_statistics(fake, "fid fake")
    for what, stats in (("real", a), ("fake", b)):
        if 0 < stats.count <= stats.mean.size:
            logger.warning(
                "fid: %d %s samples for %d-d features: the covariance is singular and FID is biased "
                "upwards; use more samples (at least 10× the feature width is customary)",
                stats.count,
                what,
                stats.mean.size,
            )
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# --- KID ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KID:
    """Kernel Inception Distance: mean and standard deviation of the unbiased MMD² over subsets.

    ``std`` is ``None`` when the subsets cover both sets whole (``num_subsets`` is then 1): every draw
    would be the same pair of sets, and a spread of 0 would claim a precision the number does not have.
    ``scale`` is what the features were divided by before the kernel (1: as given).
    """

    mean: float
    std: float | None
    subset_size: int
    num_subsets: int
    scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``(xᵀy / d + 1)³`` (the KID kernel)."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid_scale(real: Features) -> float:
    """The root mean square of the real features' coordinates, ``sqrt(mean_i ‖x_i‖² / d)``: dividing by
    it puts ``xᵀy / d`` at about 1 for typical real vectors, the scale the KID kernel is made for (the
    Inception pool features have it; unnormalised classifier features or pixels do not)."""
    x = _as_features(real, "kid real", 1)
    value = float(np.sqrt((x * x).sum(1).mean() / x.shape[1]))
    if value == 0:
        raise ValueError("kid: the real features are all zero; there is no scale to normalise by")
    return value


def kid(
    real: Features,
    fake: Features,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    rescale: bool = False,
) -> KID:
    """Kernel Inception Distance (lower = closer): unbiased MMD², cubic polynomial kernel, subsets ≤ 1000.

    Args:
        real, fake: ``(N, d)`` features (at least 2 each).
        num_subsets: how many random subset pairs to average over (1 when the subsets are both sets).
        subset_size: subset size, capped at the smaller of the two sets.
        seed: seed of the subset draws.
        rescale: divide both sets by :func:`kid_scale` of the real features first; for features other
            than the standard Inception ones, whose scale the kernel does not fit.
    """
    x, y = _as_features(real, "kid real", 2), _as_features(fake, "kid fake", 2)
    scale = kid_scale(x) if rescale else 1.0
    x, y = x / scale, y / scale
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid: subset_size must be at least 2, got {subset_size}")
    if m == x.shape[0] == y.shape[0]:  # every subset pair would be the two whole sets
        return KID(_mmd2_unbiased(x, y), None, m, 1, scale)
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _mmd2_unbiased(
                x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)]
            )
            for _ in range(num_subsets)
        ]
    )
    return KID(float(values.mean()), float(values.std()), m, num_subsets, scale)


# --- precision, recall, density, coverage ---------------------------------------------------------------


@dataclass(frozen=True)
class PRDC:
    """Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Precision and density: fidelity of the fake samples (higher = more realistic). Recall and coverage:
    how much of the real distribution the fake samples cover (higher = more diverse).
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def to_dict(self) -> dict:
        return asdict(self)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, float64, via the Gram expansion (clamped at 0)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0).sqrt_()


def _block_rows(rows: int, cols: int, memory_mb: float) -> int:
    return max(1, min(rows, int(memory_mb * 2**20 / (8 * 3 * max(cols, 1)))))


def _kth_neighbour_distance(x: torch.Tensor, k: int, memory_mb: float) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the row itself excluded)."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    block = _block_rows(x.shape[0], x.shape[0], memory_mb)
    for start in range(0, x.shape[0], block):
        dist = _distances(x[start : start + block], x)
        # The k+1 smallest include the row itself (distance 0), as in the reference prdc package.
        out[start : start + block] = dist.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def prdc(real: Features, fake: Features, *, k: int = 5, memory_mb: float = 256.0) -> PRDC:
    """Precision, recall, density and coverage with k nearest neighbours, computed in row blocks.

    The definitions (and the strict ``<`` of the reference ``prdc`` package): with ``r_i`` the distance
    from real sample i to its k-th nearest real neighbour and ``f_j`` likewise for fake samples,
    precision = share of fake samples within some real ball, recall = share of real samples within some
    fake ball, density = ``(1/kM) Σ_j #{i : ‖x_i − y_j‖ < r_i}``, coverage = share of real samples whose
    nearest fake sample lies within their ball.

    Args:
        real, fake: ``(N, d)`` and ``(M, d)`` features, each with more than ``k`` samples.
        k: neighbours (5, as in both papers).
        memory_mb: memory for one block of distances.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    x = torch.from_numpy(_as_features(real, f"prdc (k={k}) real", k + 1))
    y = torch.from_numpy(_as_features(fake, f"prdc (k={k}) fake", k + 1))
    real_radius = _kth_neighbour_distance(x, k, memory_mb)
    fake_radius = _kth_neighbour_distance(y, k, memory_mb)
    fake_in_real = torch.zeros(y.shape[0], dtype=torch.float64)  # #{i : d(x_i, y_j) < r_i}
    real_in_fake = torch.zeros(x.shape[0], dtype=torch.bool)  # ∃ j : d(x_i, y_j) < f_j
    nearest_fake = torch.empty(x.shape[0], dtype=torch.float64)
    block = _block_rows(x.shape[0], y.shape[0], memory_mb)
    for start in range(0, x.shape[0], block):
        rows = slice(start, start + block)
        dist = _distances(x[rows], y)  # (block of real, all fake)
        fake_in_real += (dist < real_radius[rows, None]).sum(0)
        real_in_fake[rows] = (dist < fake_radius[None, :]).any(1)
        nearest_fake[rows] = dist.min(1).values
    return PRDC(
        precision=float((fake_in_real > 0).double().mean()),
        recall=float(real_in_fake.double().mean()),
        density=float(fake_in_real.mean() / k),
        coverage=float((nearest_fake < real_radius).double().mean()),
        k=k,
    )


# --- Vendi score ----------------------------------------------------------------------------------------


def vendi(features: Features, *, q: float = 1.0) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel (higher = more diverse).

    ``exp(H_q(λ))`` of the eigenvalues λ of ``K / N`` with ``K_ij = cos(x_i, x_j)``; ``H_1`` is the
    Shannon entropy, ``H_q`` Rényi's of order ``q`` (``q = inf``: ``1 / max λ``). The nonzero eigenvalues
    of ``X̂ X̂ᵀ / N`` (``N × N``) equal those of ``X̂ᵀ X̂ / N`` (``d × d``), which is used when ``d < N``.
    N identical samples score 1, N orthogonal ones N.

    Args:
        features: ``(N, d)``, at least 1 sample, no zero vector.
        q: order of the entropy (``q ≥ 0``).
    """
    x = _as_features(features, "vendi", 1)
    if q < 0:
        raise ValueError(f"q must be ≥ 0, got {q}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"vendi: {int((norms == 0).sum())} feature vectors are zero; cosine is undefined")
    x = x / norms
    n, d = x.shape
    gram = x.T @ x if d < n else x @ x.T
    eigenvalues = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 1e-15]
    eigenvalues = eigenvalues / eigenvalues.sum()  # sums to 1 up to round-off (trace K / N = 1)
    if q == 1:
        entropy = -(eigenvalues * np.log(eigenvalues)).sum()
    elif np.isinf(q):
        entropy = -np.log(eigenvalues.max())
    else:
        entropy = np.log((eigenvalues**q).sum()) / (1.0 - q)
    return float(np.exp(entropy))
