"""Mode coverage (method.md §9): which classes the samples hit, and KL to the real class histogram."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ModeCoverage", "mode_coverage"]


@dataclass(frozen=True)
class ModeCoverage:
    """Modes covered (higher = more diverse) and ``KL(fake ‖ real)`` of class histograms (lower = closer).

    Attributes:
        modes_covered: classes of the real data with at least ``min_count`` fake samples.
        num_modes: classes present in the real data.
        kl: ``Σ_c p_c log(p_c / q_c)`` with p the fake and q the real class frequencies (nats); ``inf``
            when fake samples fall in a class the real data does not have.
        fake_histogram, real_histogram: class frequencies.
    """

    modes_covered: int
    num_modes: int
    kl: float
    fake_histogram: list[float]
    real_histogram: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def mode_coverage(
    fake_labels: np.ndarray,
    real_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    min_count: int = 1,
) -> ModeCoverage:
    """Mode coverage from class labels (fake ones predicted by a classifier trained on the real data).

    Args:
        fake_labels: ``(M,)`` predicted classes of the samples.
        real_labels: ``(N,)`` classes of the real data.
        num_classes: number of classes (default: one more than the largest label seen).
        min_count: samples a class needs to count as covered.

    Example:
        >>> r = mode_coverage([0, 0, 1, 1], [0, 1, 2, 0, 1, 2])
        >>> r.modes_covered, r.num_modes, round(r.kl, 4)
        (2, 3, 0.4055)
    """
    fake = np.asarray(fake_labels, dtype=np.int64).ravel()
    real = np.asarray(real_labels, dtype=np.int64).ravel()
    if fake.size == 0 or real.size == 0:
        raise ValueError(
            f"mode_coverage needs at least one label on each side, got {fake.size} and {real.size}"
        )
    if min(fake.min(), real.min()) < 0:
        raise ValueError("class labels must be non-negative integers")
    classes = num_classes or int(max(fake.max(), real.max())) + 1
    if max(fake.max(), real.max()) >= classes:
        raise ValueError(f"labels go up to {max(fake.max(), real.max())} but num_classes={classes}")
    p = np.bincount(fake, minlength=classes) / fake.size
    q = np.bincount(real, minlength=classes) / real.size
    counts = np.bincount(fake, minlength=classes)
    present = q > 0
    support = p > 0
    if (support & ~present).any():
        logger.warning(
            "mode_coverage: samples fall in classes %s that the real data does not have; KL is infinite",
            np.flatnonzero(support & ~present).tolist(),
        )
        kl = math.inf
    else:
        kl = float((p[support] * np.log(p[support] / q[support])).sum())
    return ModeCoverage(
        modes_covered=int(((counts >= min_count) & present).sum()),
        num_modes=int(present.sum()),
        kl=kl,
        fake_histogram=p.tolist(),
        real_histogram=q.tolist(),
    )
