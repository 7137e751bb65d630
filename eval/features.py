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
from .inception import load_inception
from .sources import ImageSource, open_source
from .statistics import FeatureSet, FeatureStatistics, cache_key

logger = logging.getLogger(__name__)

EXTRACTORS = ("inception", "digits", "mnist", "fashion", "pixels")

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "ModuleFeatures",
    "clean_resize",
    "compute_features",
    "default_device",
    "load_extractor",
    "module_device",
    "to_channels",
]


def load_extractor(name: str, device: torch.device | str | None = None) -> FeatureExtractor:
    """A named feature extractor, on ``device`` (default: CUDA when present).

    Args:
        name: ``"inception"`` (FID Inception-v3, 2048-d pool features, 299×299 clean resize),
            ``"digits"`` (the 8×8 digit classifier's 64-d features), ``"mnist"`` (the 28×28 one),
            ``"fashion"`` (the 28×28 Fashion-MNIST classifier's 64-d features), ``"pixels"`` (raw
            pixels, flattened).
    """
    device = torch.device(device) if device is not None else default_device()
    if name == "inception":
        extractor: FeatureExtractor = load_inception()
    elif name in ("digits", "mnist", "fashion"):
        extractor = DigitFeatures(load_digit_classifier(name))
    elif name == "pixels":
        extractor = ModuleFeatures(nn.Flatten(), name="pixels")
    else:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")
    return extractor.to(device).eval()


@torch.no_grad()
def compute_features(
    source: ImageSource | str | Path | torch.Tensor | np.ndarray,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of every image of ``source``, one extractor pass per image, with streamed statistics.

    Args:
        source: anything :func:`~atomgen.eval.sources.open_source` accepts.
        extractor: the feature extractor (already on its device).
        batch_size: images per forward pass.
        num_workers: data-loading processes for folders of image files.
        cache_dir: if given, features are read from / written to ``cache_dir/<extractor>-<key>.npz``, the
            key hashing the extractor name, the preprocessing name and the images' content.
        progress: show a progress bar.
    """
    source = open_source(source)
    fingerprint = source.fingerprint() if cache_dir is not None else ""
    path = None
    if cache_dir is not None:
        key = cache_key(extractor.name, extractor.preprocessing, fingerprint)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor.name)
        path = Path(cache_dir) / f"{safe}-{key}.npz"
        if path.is_file():
            logger.info("features of %s from the cache %s", source.name, path)
            return FeatureSet.load(path)
    device = module_device(extractor)
    chunks, stats = [], FeatureStatistics()
    bar = tqdm(total=len(source), desc=f"{extractor.name} features", unit="img", disable=not progress)
    for batch in source.batches(batch_size, num_workers):
        features = extractor(batch.to(device)).to(torch.float32)
        if not torch.isfinite(features).all():
            raise FloatingPointError(f"{extractor.name} gave non-finite features on {source.name}")
        chunk = features.cpu().numpy()
        chunks.append(chunk)
        stats.update(chunk)
        bar.update(len(batch))
    bar.close()
    result = FeatureSet(
        features=np.concatenate(chunks),
        extractor=extractor.name,
        preprocessing=extractor.preprocessing,
        fingerprint=fingerprint,
        source=source.name,
        _statistics=stats.compute() if stats.count >= 2 else None,
    )
    if path is not None:
        result.save(path)
        logger.info("cached features of %s in %s", source.name, path)
    return result
