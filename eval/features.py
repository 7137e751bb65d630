"""The features step (features → statistics → scores): named extractors, and features of a source.

The extractors themselves live in :mod:`.extractor` (the base class and preprocessing),
:mod:`.inception` and :mod:`.classifier`; this module picks one by name and runs it over a source.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .classifier import DigitFeatures, load_digit_classifier
from .extractor import (
    FeatureExtractor,
    ModuleFeatures,
    clean_resize,
    default_device,
    module_device,
    to_channels,
)
from .hub_features import load_clip, load_dinov2
from .inception import load_inception
from .sources import ImageSource, open_source
from .statistics import FeatureSet, FeatureStatistics, cache_key

logger = logging.getLogger(__name__)

EXTRACTORS = ("inception", "dinov2", "clip", "digits", "mnist", "fashion", "pixels")

__all__ = [
    "EXTRACTORS",
    "Accumulator",
    "FeatureExtractor",
    "ModuleFeatures",
    "clean_resize",
    "compute_features",
    "default_device",
    "extract_features",
    "load_extractor",
    "module_device",
    "to_channels",
]


def load_extractor(
    name: str, device: torch.device | str | None = None, weights: str | Path | None = None
) -> FeatureExtractor:
    """A named feature extractor, on ``device`` (default: CUDA when present).

    Args:
        name: ``"inception"`` (FID Inception-v3, 2048-d pool features, 299×299 clean resize),
            ``"dinov2"`` (DINOv2 ViT-L/14 as dgm-eval: 224 px, the layer-normed CLS token), ``"clip"``
            (CLIP ViT-L/14 projected image embeddings),
            ``"digits"`` (the 8×8 digit classifier's 64-d features), ``"mnist"`` (the 28×28 one),
            ``"fashion"`` (the 28×28 Fashion-MNIST classifier's 64-d features), ``"pixels"`` (raw
            pixels, flattened).
        weights: ``dinov2`` and ``clip``: a hub id or a folder saved by ``save_pretrained`` (default
            the ViT-L/14 hub ids, :data:`~atomgen.eval.hub_features.DINOV2_ID` and ``CLIP_ID``).
    """
    device = torch.device(device) if device is not None else default_device()
    if weights is not None and name not in ("dinov2", "clip"):
        raise ValueError(f"weights= applies to the dinov2 and clip extractors, not to {name!r}")
    if name == "inception":
        extractor: FeatureExtractor = load_inception()
    elif name == "dinov2":
        extractor = load_dinov2(weights)
    elif name == "clip":
        extractor = load_clip(weights)
    elif name in ("digits", "mnist", "fashion"):
        extractor = DigitFeatures(load_digit_classifier(name))
    elif name == "pixels":
        extractor = ModuleFeatures(nn.Flatten(), name="pixels")
    else:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")
    return extractor.to(device).eval()


class Accumulator:
    """Anything that consumes the batches of a pass besides the extractors (LPIPS sums, VAE scores)."""

    def update(self, batch: torch.Tensor, indices: np.ndarray) -> None:
        raise NotImplementedError


def _cache_path(cache_dir: Path, extractor: FeatureExtractor, fingerprint: str) -> Path:
    key = cache_key(extractor.name, extractor.preprocessing, fingerprint)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor.name)
    return Path(cache_dir) / f"{safe}-{key}.npz"


@torch.no_grad()
def extract_features(
    source: ImageSource | str | Path | torch.Tensor | np.ndarray,
    extractors: dict[str, FeatureExtractor],
    accumulators: list[Accumulator] = (),
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FeatureSet]:
    """Features of every image of ``source`` for several extractors, from one decoding pass.

    Each batch is decoded once and given to every extractor whose features are not cached, and to every
    accumulator; when all features are cached and there is no accumulator, nothing is decoded.

    Args:
        source: anything :func:`~atomgen.eval.sources.open_source` accepts.
        extractors: name → extractor (each already on its device).
        accumulators: objects with ``update(batch, indices)``, fed the same batches (on the CPU).
        batch_size: images per forward pass.
        num_workers: data-loading processes for folders of image files.
        cache_dir: if given, features are read from / written to ``cache_dir/<extractor>-<key>.npz``, the
            key hashing the extractor name, the preprocessing name and the images' content.
        progress: show a progress bar.

    Returns:
        name → :class:`~atomgen.eval.statistics.FeatureSet` (``indices`` set when files were skipped).
    """
    source = open_source(source)
    fingerprint = source.fingerprint() if cache_dir is not None else ""
    results: dict[str, FeatureSet] = {}
    paths = {}
    for key, extractor in extractors.items():
        if cache_dir is not None:
            paths[key] = _cache_path(Path(cache_dir), extractor, fingerprint)
            if paths[key].is_file():
                logger.info("%s features of %s from the cache %s", extractor.name, source.name, paths[key])
                results[key] = FeatureSet.load(paths[key])
    todo = {key: extractor for key, extractor in extractors.items() if key not in results}
    if not todo and not accumulators:
        return results
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in todo}
    stats = {key: FeatureStatistics() for key in todo}
    kept = []
    names = ", ".join(extractor.name.split(" ")[0] for extractor in todo.values()) or "images"
    bar = tqdm(total=len(source), desc=f"{names} features", unit="img", disable=not progress)
    for batch, indices in source.indexed_batches(batch_size, num_workers):
        for key, extractor in todo.items():
            features = extractor(batch.to(module_device(extractor))).to(torch.float32)
            if not torch.isfinite(features).all():
                raise FloatingPointError(f"{extractor.name} gave non-finite features on {source.name}")
            chunk = features.cpu().numpy()
            chunks[key].append(chunk)
            stats[key].update(chunk)
        for accumulator in accumulators:
            accumulator.update(batch, indices)
        kept.append(indices)
        bar.update(len(batch))
    bar.close()
    indices = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    skipped = len(indices) != len(source)
    for key, extractor in todo.items():
        results[key] = FeatureSet(
            features=np.concatenate(chunks[key]) if chunks[key] else np.zeros((0, 0), np.float32),
            extractor=extractor.name,
            preprocessing=extractor.preprocessing,
            fingerprint=fingerprint,
            source=source.name,
            indices=indices if skipped else None,
            _statistics=stats[key].compute() if stats[key].count >= 2 else None,
        )
        if key in paths:
            results[key].save(paths[key])
            logger.info("cached %s features of %s in %s", extractor.name, source.name, paths[key])
    return results


def compute_features(
    source: ImageSource | str | Path | torch.Tensor | np.ndarray,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of every image of ``source`` for one extractor (see :func:`extract_features`)."""
    return extract_features(
        source,
        {"features": extractor},
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        progress=progress,
    )["features"]
