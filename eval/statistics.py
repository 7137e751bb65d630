"""Feature statistics: mean and covariance in float64, streamed, and the ``.npz`` feature cache.

The middle of the three steps (features → statistics → scores). :class:`FeatureStatistics` merges batches
with the parallel (Chan et al.) update, so streaming gives the same mean and covariance as ``np.cov`` on
all features at once, without the cancellation of accumulating raw second moments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1

__all__ = ["FeatureSet", "FeatureStatistics", "Statistics", "cache_key"]


@dataclass(frozen=True)
class Statistics:
    """Mean ``(d,)`` and covariance ``(d, d)`` (unbiased, ``N − 1``) of ``count`` feature vectors, float64."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def save(self, path: str | Path) -> None:
        """Write ``mu``/``sigma``/``count`` to an ``.npz`` (the key names pytorch-fid and clean-fid use)."""
        np.savez(path, mu=self.mean, sigma=self.cov, count=self.count)

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        """Read statistics written by :meth:`save` (or a pytorch-fid / clean-fid ``mu``/``sigma`` file)."""
        with np.load(path) as archive:
            count = int(archive["count"]) if "count" in archive else 0
            return cls(archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64), count)


class FeatureStatistics:
    """Streamed mean and covariance: call :meth:`update` with batches, then :meth:`compute`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 3))
        >>> stats = FeatureStatistics()
        >>> for batch in np.split(x, [7, 50]):
        ...     stats.update(batch)
        >>> bool(np.allclose(stats.compute().cov, np.cov(x, rowvar=False)))
        True
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._scatter: np.ndarray | None = None  # Σ (x − mean)(x − mean)ᵀ

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Add a batch ``(B, d)`` of feature vectors."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (B, d), got shape {x.shape}")
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature width changed from {self._mean.shape[0]} to {x.shape[1]}")
        if not np.isfinite(x).all():
            raise FloatingPointError("features contain NaN or inf; check the images and the extractor")
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_scatter = centred.T @ centred
        if self._mean is None:
            self._mean, self._scatter, self.count = batch_mean, batch_scatter, n
            return
        total = self.count + n
        delta = batch_mean - self._mean
        self._scatter += batch_scatter + np.outer(delta, delta) * (self.count * n / total)
        self._mean = self._mean + delta * (n / total)
        self.count = total

    def compute(self) -> Statistics:
        """Mean and unbiased covariance of everything added so far (needs at least 2 vectors)."""
        if self._mean is None or self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return Statistics(self._mean.copy(), self._scatter / (self.count - 1), self.count)


def cache_key(extractor: str, preprocessing: str, fingerprint: str) -> str:
    """The cache key: sha256 of extractor name, preprocessing name and data fingerprint (16 hex digits)."""
    return hashlib.sha256(f"{extractor}\n{preprocessing}\n{fingerprint}".encode()).hexdigest()[:16]


@dataclass
class FeatureSet:
    """Features of one image source, with where they came from.

    Attributes:
        features: ``(N, d)`` float32.
        extractor: name of the feature extractor (named in every report).
        preprocessing: name of the preprocessing (e.g. the resize), also reported.
        fingerprint: content hash of the images.
        source: what the images were (a path, a dataset name).
        indices: which images of the source the rows are, when some were skipped (``None``: all, in
            order).
    """

    features: np.ndarray
    extractor: str
    preprocessing: str
    fingerprint: str = ""
    source: str = ""
    indices: np.ndarray | None = None
    _statistics: Statistics | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def statistics(self) -> Statistics:
        """Mean and covariance of the features (computed once)."""
        if self._statistics is None:
            stats = FeatureStatistics()
            stats.update(self.features)
            self._statistics = stats.compute()
        return self._statistics

    def save(self, path: str | Path) -> None:
        """Write features, statistics and provenance to an ``.npz``."""
        stats = self.statistics if len(self) >= 2 else None
        meta = {
            "format": CACHE_FORMAT,
            "extractor": self.extractor,
            "preprocessing": self.preprocessing,
            "fingerprint": self.fingerprint,
            "source": self.source,
        }
        arrays = {"features": self.features, "meta": np.array(json.dumps(meta))}
        if stats is not None:
            arrays.update(mu=stats.mean, sigma=stats.cov, count=stats.count)
        if self.indices is not None:
            arrays["indices"] = self.indices
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # never leave a half-written cache file

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file written by :meth:`save`."""
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"{path} has cache format {meta.get('format')}, expected {CACHE_FORMAT}")
            stats = None
            if "mu" in archive:
                stats = Statistics(archive["mu"], archive["sigma"], int(archive["count"]))
            return cls(
                features=archive["features"],
                extractor=meta["extractor"],
                preprocessing=meta["preprocessing"],
                fingerprint=meta["fingerprint"],
                source=meta["source"],
                indices=archive.get("indices", None),
                _statistics=stats,
            )
