"""Scores of class-conditional samples: each class against that class's real images, averaged over classes.

Guidance trades diversity *within* a class for fidelity to it, so pooled scores would hide it: a model that
draws one image per class can have perfect pooled recall over ten classes. The class-conditional benchmark
(``bench/cfg.py``) and the demo's CFG section score through :func:`per_class_scores`.
"""

from __future__ import annotations

import numpy as np
import torch

from .lpips import LPIPSFeatures, lpips_diversity
from .scores import fid, prdc, vendi

PRDC_K = 5  # neighbours of precision, recall, density and coverage, within each class


def per_class_scores(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    labels: np.ndarray,
    *,
    distribution: bool = True,
    images: torch.Tensor | None = None,
    lpips: LPIPSFeatures | None = None,
    lpips_values: dict[int, float] | None = None,
) -> dict[str, float]:
    """Per-class precision, recall, density and coverage (k = 5), averaged over the requested classes.

    Args:
        real, real_labels: the dataset's features ``(N, D)`` and labels ``(N,)``.
        fake, labels: the samples' features ``(M, D)`` and the labels they were asked for ``(M,)``.
        distribution: also FID and Vendi per class (they need more samples per class than features
            for a full-rank covariance).
        images, lpips: the samples in [0, 1] and an LPIPS extractor: also the all-pairs LPIPS diversity.
        lpips_values: class → that class's mean pairwise LPIPS, already computed (from
            :class:`~atomgen.eval.lpips.LPIPSGroupSums`), instead of ``images`` and ``lpips``.
    """
    if len(fake) != len(labels):
        raise ValueError(f"{len(fake)} sample features but {len(labels)} labels")
    missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(real_labels).tolist()))
    if missing:
        raise ValueError(f"no real images of the requested classes {missing}")
    rows = []
    for c in np.unique(labels):
        ours, theirs = fake[labels == c], real[real_labels == c]
        scores = prdc(theirs, ours, k=PRDC_K)
        row = {m: getattr(scores, m) for m in ("precision", "recall", "density", "coverage")}
        if distribution:
            row |= {"fid": fid(theirs, ours), "vendi": vendi(ours)}
        if lpips_values is not None:
            row["lpips"] = float(lpips_values[int(c)])
        elif lpips is not None and images is not None:
            row["lpips"] = lpips_diversity(images[labels == c], extractor=lpips, progress=False).mean
        rows.append(row)
    return {m: float(np.mean([row[m] for row in rows])) for m in rows[0]}
