"""Scores of class-conditional samples, class by class: each class's samples against that class's real
images on a classifier's features (FID, precision, recall, density, coverage, Vendi, LPIPS diversity),
averaged over classes, and class accuracy, the share of samples the classifier gives the requested label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ClassScorer:
    """Per-class scores of samples against real images, with the class accuracy (``accuracy``).

    Args:
        real: the real images ``(N, C, H, W)`` in [0, 1].
        real_labels: their labels ``(N,)``.
        extractor: the feature extractor (a module mapping images in [0, 1] to ``(B, D)`` features).
        classifier: the classifier of :func:`atomgen.eval.classify` (class accuracy).
        lpips: an :class:`atomgen.eval.LPIPSFeatures` fitted to the resolution (the LPIPS diversity).
    """

    def __init__(
        self, real: torch.Tensor, real_labels: np.ndarray, extractor: Any, classifier: Any, lpips: Any
    ):
        self.real_labels, self.extractor, self.classifier, self.lpips = (
            real_labels,
            extractor,
            classifier,
            lpips,
        )
        self.real_features = self._features(real)

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        resolution: int,
        limit: int | None,
        device: torch.device,
        extractor: str | None = None,
        weights: str | None = None,
    ) -> ClassScorer:
        """The scorer of a dataset atomgen knows: on ``extractor``'s features (a name of
        :func:`atomgen.eval.load_extractor`, ``weights`` for ``dinov2``/``clip``; ``None``: the dataset
        classifier's own), with class accuracy from the dataset classifier."""
        from atomgen.data import load_dataset
        from atomgen.eval import LPIPSFeatures, load_digit_classifier, load_extractor
        from atomgen.eval.run import CLASSIFIER_OF_DATASET as CLASSIFIER  # dataset → its classifier

        data = load_dataset(dataset, resolution=resolution, channels=1, limit=limit)
        return cls(
            ((data.images + 1) / 2).clamp(0, 1),
            data.labels.numpy(),
            load_extractor(extractor or CLASSIFIER[dataset], device, weights=weights),
            load_digit_classifier(CLASSIFIER[dataset]).to(device),
            LPIPSFeatures().fit_to(resolution).to(device),
        )

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> np.ndarray:
        device = next(self.extractor.parameters()).device
        return torch.cat([self.extractor(b.to(device)).cpu() for b in images.split(500)]).double().numpy()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        """The scores of ``images`` (in [0, 1]) sampled for ``labels``."""
        from atomgen.eval import classify, per_class_scores

        features = self._features(images)
        scores = per_class_scores(
            self.real_features, self.real_labels, features, labels, images=images, lpips=self.lpips
        )
        return {**scores, "accuracy": float((classify(images, self.classifier) == labels).mean())}


__all__ = ["ClassScorer"]
