"""Step 2 of ``atomgen eval``: which metrics apply to the sources, checked, and the models they need.

Defaults: the metrics against real images (:data:`METRICS`; mode coverage only on a digit dataset),
per-class scores and class accuracy for labelled samples of a labelled dataset (:data:`CLASS_METRICS`),
the CLIP score and diversity within each prompt for samples with prompts (:data:`PROMPT_METRICS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomgen.pipelines import AtomVAEPipeline

from .classifier import DigitClassifier, load_digit_classifier
from .features import FeatureExtractor, load_extractor
from .folders import FolderSource, folder_prompts
from .hub_features import CLIPFeatures
from .image_source import ImageSource
from .lpips import LPIPSFeatures
from .per_class import PRDC_K
from .prompts import prompt_groups

__all__ = [
    "ALL_METRICS",
    "CLASSIFIER_OF_DATASET",
    "CLASS_METRICS",
    "FEATURE_METRICS",
    "METRICS",
    "PROMPT_METRICS",
    "EvalPlan",
    "plan_eval",
]

METRICS = ("fid", "kid", "prdc", "vendi", "lpips_diversity", "mode_coverage")  # real against fake
CLASS_METRICS = ("per_class", "class_accuracy")  # class-conditional samples
PROMPT_METRICS = ("clip_score", "prompt_diversity")  # samples with prompts
ALL_METRICS = METRICS + CLASS_METRICS + PROMPT_METRICS
FEATURE_METRICS = ("fid", "kid", "prdc", "vendi")
NEEDS = {"fid": 2, "kid": 2, "prdc": PRDC_K + 1, "vendi": 1, "lpips_diversity": 2, "mode_coverage": 1}

# dataset name → its committed classifier (features for "auto", labels for mode coverage)
CLASSIFIER_OF_DATASET = {"digits": "digits", "mnist5k": "mnist", "fashion-mnist": "fashion"}


@dataclass
class EvalPlan:
    """What to compute: the metrics, and the models they need (``None``: not needed)."""

    metrics: list[str]
    extractor: FeatureExtractor | None = None
    clip: CLIPFeatures | None = None
    classifier: DigitClassifier | None = None
    lpips: LPIPSFeatures | None = None
    prompts: tuple[list[str], np.ndarray] | None = None  # distinct prompts, each fake image's position
    vae: AtomVAEPipeline | None = None


def _digit_classifier_name(source: ImageSource) -> str | None:
    """The digit classifier for grey square digits: ``"digits"`` up to 16 px, ``"mnist"`` up to 32 px."""
    if source.name in CLASSIFIER_OF_DATASET:
        return CLASSIFIER_OF_DATASET[source.name]
    channels, height, width = source.image_shape()
    if channels != 1 or height != width:
        return None
    return "digits" if height <= 16 else "mnist" if height <= 32 else None


def _fake_prompts(fake: ImageSource, requested: bool) -> list[str | None] | None:
    if fake.prompts is not None:
        return fake.prompts
    if requested and type(fake) is FolderSource:  # a folder per prompt, on request only (not a manifest)
        return folder_prompts(fake)
    return None


def plan_eval(
    real: ImageSource | None,
    fake: ImageSource,
    metrics: list[str] | tuple[str, ...] | None,
    extractor: str | FeatureExtractor,
    device: torch.device,
    k: int = PRDC_K,
    *,
    vae: AtomVAEPipeline | None = None,
    extractor_weights: str | Path | None = None,
    clip_weights: str | Path | None = None,
) -> EvalPlan:
    """Which metrics apply, checked against the sources, and the models they need (loaded once)."""
    known = real is not None and real.name in CLASSIFIER_OF_DATASET
    digit_kind = _digit_classifier_name(real) if real is not None else None
    labelled = fake.labels is not None and real is not None and real.labels is not None
    requested = metrics is not None
    if metrics is None:
        metrics = [m for m in METRICS if m != "mode_coverage" or known] if real is not None else []
        metrics += list(CLASS_METRICS) if labelled else []
        metrics = [m for m in metrics if m != "class_accuracy" or known]
        metrics += list(PROMPT_METRICS) if fake.prompts is not None else []
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
    if not metrics:
        raise ValueError(
            f"nothing to score for {fake.name} without a real set: pass --real (images to compare with), or "
            "samples with prompts (a manifest.json of `atomgen sample --prompts`) for the CLIP score"
        )
    against_real = [m for m in metrics if m not in PROMPT_METRICS]
    if against_real and real is None:
        raise ValueError(f"{', '.join(against_real)} compare with real images: pass --real")
    if {"per_class", "class_accuracy"} & set(metrics) and fake.labels is None:
        raise ValueError(
            f"per_class and class_accuracy need the class of every sample; {fake.name} has none (sample "
            "a class-conditional run or pipeline, or a manifest with class_label)"
        )
    if "per_class" in metrics and real.labels is None:
        raise ValueError(
            f"per_class needs the real images' classes; {real.name} has none (a dataset name has them)"
        )
    for metric in ("mode_coverage", "class_accuracy"):
        if metric in metrics and digit_kind is None:
            raise ValueError(
                f"{metric} needs grey digit images (8×8 or 28×28, like the digits and mnist5k datasets) or "
                f"a dataset with a classifier ({', '.join(CLASSIFIER_OF_DATASET)}); {real.name} is neither"
            )
    if real is not None:
        _check_counts([m for m in metrics if m in NEEDS], len(real), len(fake), k)
    plan = EvalPlan(metrics, vae=vae)
    if PROMPT_METRICS[0] in metrics or PROMPT_METRICS[1] in metrics:
        plan.prompts = prompt_groups(_fake_prompts(fake, requested), fake.name)
    if set((*FEATURE_METRICS, "per_class", "prompt_diversity")) & set(metrics):
        if isinstance(extractor, str):
            name = extractor
            if extractor == "auto":
                name = digit_kind if known else "dinov2" if "prompt_diversity" in metrics else "inception"
            extractor = load_extractor(name, device, weights=extractor_weights)
        plan.extractor = extractor
    if "clip_score" in metrics:
        same = isinstance(plan.extractor, CLIPFeatures) and clip_weights in (None, extractor_weights)
        plan.clip = plan.extractor if same else load_extractor("clip", device, weights=clip_weights)
    if {"mode_coverage", "class_accuracy"} & set(metrics):
        plan.classifier = load_digit_classifier(digit_kind).to(device)
    if {"lpips_diversity", "per_class", "prompt_diversity"} & set(metrics):
        plan.lpips = LPIPSFeatures().to(device)
    return plan


def _check_counts(metrics: list[str], real: int, fake: int, k: int) -> None:
    """Fail before any feature is computed when a metric has too few images (never NaN later)."""
    needs = NEEDS | {"prdc": k + 1}
    for metric in metrics:
        for side, count in (("real", real), ("fake", fake)):
            if count < needs[metric]:
                detail = f" (k={k} neighbours)" if metric == "prdc" else ""
                raise ValueError(
                    f"{metric}{detail} needs at least {needs[metric]} {side} images, got {count}"
                )
