"""The demo's scores: the scorer of a set of samples, the table's columns, and how a score over seeds reads.

:class:`Scorer` runs :func:`atomgen.eval.run_eval` on each set of samples against the training data (the
DDPM section's methods and the VAE section's prior samples); :data:`COLUMNS` says what each of its
metrics measures and which direction is better; :func:`aggregate` and :func:`format_entry` turn per-seed
values into the report's mean ± std.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "Column", "Scorer", "aggregate", "decimals_of", "format_entry", "number", "quantised"]


@dataclass(frozen=True)
class Column:
    """One metric of the table: its key in the scores, its header, which way is better, its format."""

    key: str
    label: str
    better: str  # "lower" or "higher"
    decimals: int | None  # None: four significant digits (KID's scale depends on the features)
    aspect: str  # what "better" buys: fidelity, diversity, or both (a distance between distributions)


COLUMNS = (
    Column("fid", "FID", "lower", 2, "fidelity and diversity"),
    Column("kid", "KID", "lower", None, "fidelity and diversity"),
    Column("precision", "precision", "higher", 3, "fidelity"),
    Column("recall", "recall", "higher", 3, "diversity"),
    Column("density", "density", "higher", 3, "fidelity"),
    Column("coverage", "coverage", "higher", 3, "diversity"),
    Column("vendi", "Vendi", "higher", 2, "diversity"),
    Column("lpips_diversity", "LPIPS div.", "higher", 4, "diversity"),
    Column("modes_covered", "modes", "higher", 1, "diversity"),
    Column("kl", "class KL", "lower", 4, "mode balance"),
)


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof = 1``; ``None`` for one value) of per-seed values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "values": list(values)}
    return {
        "mean": float(np.mean(kept)),
        "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "values": list(values),
    }


def decimals_of(key: str) -> int | None:
    """The decimals a column's values are printed with."""
    return next(c.decimals for c in COLUMNS if c.key == key)


def number(value: float, decimals: int | None, sign: bool = False) -> str:
    """``value`` at ``decimals`` (``None``: four significant digits), with its sign if ``sign``."""
    plus = "+" if sign else ""
    return f"{value:{plus}.4g}" if decimals is None else f"{value:{plus}.{decimals}f}"


def format_entry(entry: dict[str, Any], decimals: int | None) -> str:
    """An :func:`aggregate` as ``mean ± std`` (``–`` without values, no ± for one seed)."""
    if entry["mean"] is None:
        return "–"
    text = number(entry["mean"], decimals)
    if entry["std"] is not None:
        text += f" ± {number(entry['std'], decimals)}"
    return text


class Scorer:
    """:func:`atomgen.eval.run_eval` on each set of samples, against the training data.

    LPIPS diversity is scored apart with :func:`atomgen.eval.lpips_diversity`, so that the real images'
    value is computed once rather than in every ``run_eval`` call; the real features are cached.

    Args:
        data: the real images (:class:`atomgen.data.ImageData`, in [-1, 1], with labels).
        config: the demo's settings (``inception`` chooses the features).
        cache_dir: where the real images' features are cached.
        device: where the extractors run.
        progress: draw the scoring bars.
    """

    def __init__(self, data: Any, config: DemoConfig, cache_dir: Path, device: torch.device, progress: bool):
        from ..eval import LPIPSFeatures, TensorSource, load_extractor, lpips_diversity
        from ..eval.run import CLASSIFIER_OF_DATASET, METRICS

        self.real = TensorSource(data.images, value_range=(-1.0, 1.0), name=data.name, labels=data.labels)
        self.extractor = load_extractor("inception", device) if config.inception else "auto"
        self.metrics = [
            m
            for m in METRICS
            if m != "lpips_diversity" and (m != "mode_coverage" or data.name in CLASSIFIER_OF_DATASET)
        ]
        self.cache_dir, self.device, self.progress = cache_dir, device, progress
        self.lpips = LPIPSFeatures().fit_to(min(data.image_shape[1:])).to(device)
        real = lpips_diversity(self.real, extractor=self.lpips, progress=progress)
        self.description: dict[str, Any] = {
            "real": {"source": data.name, "images": len(data)},
            "lpips": {"extractor": real.extractor, "preprocessing": real.preprocessing},
            "reference": {"lpips_diversity": real.mean},
        }

    def __call__(self, images: torch.Tensor, name: str) -> dict[str, Any]:
        """Score ``images`` in [0, 1]: ``metrics`` (the keys of :data:`COLUMNS`), ``details`` and
        ``eval_seconds``; records what scored them in :attr:`description`."""
        from ..eval import TensorSource, lpips_diversity, run_eval

        started = time.perf_counter()
        fake = TensorSource(images, name=name)
        result = run_eval(
            self.real,
            fake,
            self.metrics,
            self.extractor,
            device=self.device,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        lpips = lpips_diversity(fake, extractor=self.lpips, progress=self.progress)
        scores = result["metrics"]
        metrics = {
            "fid": scores["fid"],
            "kid": scores["kid"]["mean"],
            **{key: scores["prdc"][key] for key in ("precision", "recall", "density", "coverage")},
            "vendi": scores["vendi"]["fake"],
            "lpips_diversity": lpips.mean,
        }
        reference = self.description["reference"]
        reference["vendi"] = scores["vendi"]["real"]
        if "mode_coverage" in scores:
            modes = scores["mode_coverage"]
            metrics.update(modes_covered=modes["modes_covered"], kl=modes["kl"])
            reference.update(modes_covered=modes["num_modes"], kl=0.0)
            self.description["classifier"] = modes["classifier"]
        self.description["features"] = {
            "extractor": result["extractor"],
            "preprocessing": result["preprocessing"],
        }
        self.description["kid"] = {k: scores["kid"][k] for k in ("subset_size", "num_subsets")}
        self.description["prdc_k"] = scores["prdc"]["k"]
        details = {"kid_std": scores["kid"]["std"]}
        if "mode_coverage" in scores:
            details["class_histogram"] = scores["mode_coverage"]["fake_histogram"]
        return {
            "metrics": {key: _finite_or_none(value) for key, value in metrics.items()},
            "details": details,
            "eval_seconds": time.perf_counter() - started,
        }


def quantised(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to 8 bits, as every scored set of the demo is (and as a PNG stores it)."""
    return (images * 255).round() / 255


def _finite_or_none(value: float | int) -> float | int | None:
    """JSON has no infinity: a non-finite score (an infinite class KL) becomes ``None``, with a warning."""
    if isinstance(value, float) and not math.isfinite(value):
        logger.warning("a score is %s; written as null", value)
        return None
    return value
