"""The logic of ``atomgen eval``: resolve the sources, plan, read each source once, score, report.

:func:`run_eval` is four named steps: :func:`open_sources` (images, a run's samples, a VAE's prior
samples), :func:`plan_eval` (which metrics apply, and which extractors they need), :func:`read_source`
(one decoding pass per source that feeds every extractor and accumulator the metrics need; features
cached by extractor) and :func:`score` (numbers from features alone).

- A VAE as the generated side is scored on its decoded prior samples, and the VAE scores of :mod:`.vae`
  are added on the real images.
- A class-conditional model (a run of ``atomgen train`` with ``model.num_classes``, or its
  ``pipeline/``) is sampled with balanced classes; per-class scores (:func:`per_class_scores`, as the
  class-conditional benchmark computes them) and, where a classifier is known for the real dataset, the
  class accuracy are added.
- Images with prompts (a ``manifest.json`` of ``atomgen sample``, or a folder per prompt) get the CLIP
  score and diversity within each prompt (:mod:`.prompts`); ``real`` is then optional.

``atomgen/cli.py`` parses with :func:`~atomgen.eval.command.add_eval_arguments` and dispatches to
:func:`~atomgen.eval.command.eval_command`.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from atomgen.pipelines import AtomVAEPipeline

from .classifier import ClassifierLogits
from .features import FeatureExtractor, default_device, extract_features
from .folders import ManifestSource
from .grids import save_image_grid
from .lpips import LPIPSGroupSums
from .modes import mode_coverage
from .per_class import PRDC_K, per_class_scores
from .plan import (
    ALL_METRICS,
    CLASS_METRICS,
    CLASSIFIER_OF_DATASET,
    FEATURE_METRICS,
    METRICS,
    PROMPT_METRICS,
    EvalPlan,
    plan_eval,
)
from .prompts import clip_scores, prompt_scores
from .report import DESCRIPTIONS, DIVERSITY_CAVEAT, write_reports
from .scores import fid, kid, prdc, vendi
from .sources import ImageSource, RunSampling, TensorSource, open_source, vae_directory
from .statistics import FeatureSet
from .vae import ACTIVE_THRESHOLD, VAEScoreSums, load_vae_pipeline, prior_samples, reconstruct

logger = logging.getLogger(__name__)

DIGIT_DATASETS = CLASSIFIER_OF_DATASET  # the old name, still used by atomgen.demo

__all__ = [
    "ALL_METRICS",
    "CLASSIFIER_OF_DATASET",
    "CLASS_METRICS",
    "DESCRIPTIONS",
    "METRICS",
    "PROMPT_METRICS",
    "EvalPlan",
    "SourceRead",
    "open_sources",
    "plan_eval",
    "read_source",
    "run_eval",
    "score",
    "write_reports",
]

Spec = str | Path | torch.Tensor | np.ndarray | ImageSource


@dataclass
class SourceRead:
    """What one pass over a source gave: features by extractor, LPIPS group sums, VAE sums, and which
    images were read (unreadable ones skipped)."""

    features: dict[str, FeatureSet]
    indices: np.ndarray
    lpips: LPIPSGroupSums | None = None
    vae: VAEScoreSums | None = None
    lpips_preprocessing: str = ""


@dataclass
class _Kept:
    indices: list = field(default_factory=list)

    def update(self, batch: torch.Tensor, indices: np.ndarray) -> None:
        self.indices.append(indices)


def run_eval(
    real: Spec | None,
    fake: Spec | AutoencoderKL | AtomVAEPipeline,
    metrics: list[str] | tuple[str, ...] | None = None,
    extractor: str | FeatureExtractor = "auto",
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    cache_dir: str | Path | None = None,
    k: int = PRDC_K,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    num_samples: int = 256,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    active_threshold: float = ACTIVE_THRESHOLD,
    extractor_weights: str | Path | None = None,
    clip_weights: str | Path | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate generated images (against real ones); optionally write ``report.json`` and ``report.md``.

    Args:
        real, fake: image folders, ``.npz`` arrays, dataset names (``digits``, ``mnist5k``,
            ``fashion-mnist``), run directories (saved samples, or samples drawn from the saved pipeline:
            balanced classes for a class-conditional one), sample manifests, tensors or sources.
            ``fake`` may also be a VAE (a VAE run directory, an ``AutoencoderKL``, an ``AtomVAEPipeline``):
            its decoded prior samples are scored, and ``report["metrics"]["vae"]`` adds
            :func:`~atomgen.eval.vae_scores` on the real images. ``real`` may be ``None`` when only
            :data:`PROMPT_METRICS` are asked for.
        metrics: any of :data:`ALL_METRICS`; default: those that apply (:data:`METRICS` with a real
            set, ``mode_coverage`` only for a digit dataset; :data:`CLASS_METRICS` for labelled samples
            of a labelled dataset; :data:`PROMPT_METRICS` for samples with prompts).
        extractor: ``"auto"`` (the dataset's classifier when ``real`` is one of
            :data:`CLASSIFIER_OF_DATASET`, DINOv2 for samples with prompts, else the FID Inception-v3),
            a name from :data:`~atomgen.eval.features.EXTRACTORS`, or a :class:`FeatureExtractor`.
        out_dir: where to write the reports (``None``: return the dict only).
        batch_size, num_workers: images per forward pass; loader processes for image folders.
        device: default CUDA when present.
        cache_dir: feature cache folder (see :func:`~atomgen.eval.features.extract_features`).
        k: neighbours for PRDC.
        kid_subsets, kid_subset_size: KID subsets.
        num_samples, num_inference_steps, guidance_scale: samples drawn from a run directory's pipeline
            (or a VAE's prior), its denoising steps and (class-conditional) CFG scale; ``None``: the
            pipeline's defaults.
        active_threshold: posterior-mean variance above which a VAE's latent unit is active.
        extractor_weights: hub id or folder of the ``dinov2``/``clip`` extractor's weights.
        clip_weights: hub id or folder of the CLIP model of the CLIP score (default ViT-L/14).
        skip_unreadable: leave out image files that cannot be decoded, listed in the report's notes.
        progress: progress bars.

    Returns:
        The report as a dict (what ``report.json`` holds).
    """
    device = torch.device(device) if device is not None else default_device()
    sampling = RunSampling(num_samples, batch_size, num_inference_steps, guidance_scale=guidance_scale)
    real_source, fake_source, vae = open_sources(real, fake, sampling, device, skip_unreadable)
    plan = plan_eval(
        real_source, fake_source, metrics, extractor, device, k, vae=vae,
        extractor_weights=extractor_weights, clip_weights=clip_weights,
    )  # fmt: skip
    started = time.perf_counter()
    options = dict(batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir, progress=progress)
    reads = {
        side: read_source(side, source, plan, threshold=active_threshold, **options)
        for side, source in (("real", real_source), ("fake", fake_source))
        if source is not None
    }
    report: dict = {}
    for side, source in (("real", real_source), ("fake", fake_source)):
        if source is not None:
            report[side] = {"source": source.name, "images": len(reads[side].indices)}
            if isinstance(source, ManifestSource):  # what drew the samples, as `atomgen sample` wrote it
                report[side] |= {key: source.manifest.get(key) for key in ("pipeline", "settings")}
    report["device"] = str(device)
    report |= score(
        plan, reads, real_source, fake_source, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size
    )
    notes = [note for source in (real_source, fake_source) if source is not None for note in source.notes()]
    if notes:
        report["notes"] = notes
    if vae is not None and out_dir is not None:
        report["files"] = _save_vae_grids(Path(out_dir), vae, real_source, fake_source)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["versions"] = {"python": platform.python_version(), "torch": torch.__version__}
    if out_dir is not None:
        write_reports(report, out_dir)
    return report


# --- step 1: sources ------------------------------------------------------------------------------------


def open_sources(
    real: Spec | None, fake, sampling: RunSampling, device: torch.device, skip_unreadable: bool = False
) -> tuple[ImageSource | None, ImageSource, AtomVAEPipeline | None]:
    """``(real, fake, vae)``: the two sources, and the VAE when ``fake`` is one (its prior samples are
    then the fake source)."""
    options = dict(sampling=sampling, device=device, skip_unreadable=skip_unreadable)
    real_source = None if real is None else open_source(real, **options)
    if not _is_vae(fake):
        return real_source, open_source(fake, **options), None
    vae = load_vae_pipeline(fake, device)
    if sampling.num_inference_steps is not None:
        logger.warning(
            "a VAE has no denoising steps: num_inference_steps=%d is ignored", sampling.num_inference_steps
        )
    generator = torch.Generator().manual_seed(sampling.seed)  # the same draws as open_source makes
    samples = prior_samples(vae, sampling.num_samples, batch_size=sampling.batch_size, generator=generator)
    return real_source, TensorSource(samples, name=f"{_vae_name(fake)} (prior samples)"), vae


def _is_vae(spec) -> bool:
    if isinstance(spec, AutoencoderKL | AtomVAEPipeline):
        return True
    return isinstance(spec, str | Path) and vae_directory(spec) is not None


def _vae_name(spec) -> str:
    return str(spec) if isinstance(spec, str | Path) else type(spec).__name__


# --- step 3: one pass over each source ------------------------------------------------------------------


def read_source(
    side: str, source: ImageSource, plan: EvalPlan, *, threshold: float = ACTIVE_THRESHOLD, **options
) -> SourceRead:
    """Decode ``source`` once and feed every extractor and accumulator that ``plan`` needs on ``side``
    (``"real"`` or ``"fake"``); ``options`` go to :func:`~atomgen.eval.features.extract_features`."""
    metrics, fake = set(plan.metrics), side == "fake"
    extractors: dict[str, FeatureExtractor] = {}
    uses = set((*FEATURE_METRICS, "per_class")) | ({"prompt_diversity"} if fake else set())
    if plan.extractor is not None and metrics & uses:
        extractors["features"] = plan.extractor
    if fake and plan.clip is not None and plan.clip is not plan.extractor:
        extractors["clip"] = plan.clip
    wants_labels = "mode_coverage" in metrics and (fake or source.labels is None)
    if plan.classifier is not None and (wants_labels or (fake and "class_accuracy" in metrics)):
        extractors["logits"] = ClassifierLogits(plan.classifier)
    kept, accumulators = _Kept(), []
    lpips, preprocessing = None, ""
    groupings = {}
    if "lpips_diversity" in metrics:
        groupings["all"] = None
    if fake and "per_class" in metrics:
        groupings["class"] = source.labels
    if fake and "prompt_diversity" in metrics:
        groupings["prompt"] = plan.prompts[1]
    if groupings:
        plan.lpips.fit_to(min(source.image_shape()[1:]))  # digits are upsampled; the report says so
        preprocessing = plan.lpips.preprocessing
        lpips = LPIPSGroupSums(plan.lpips, groupings, len(source))
        accumulators.append(lpips)
    vae = VAEScoreSums(plan.vae, threshold) if plan.vae is not None and not fake else None
    if vae is not None:
        accumulators.append(vae)
    if not extractors:  # the feature rows name the images read; without features, count them here
        accumulators.append(kept)
    features = extract_features(source, extractors, accumulators, **options)
    if not extractors:
        indices = np.concatenate(kept.indices) if kept.indices else np.zeros(0, dtype=np.int64)
    else:
        indices = next(
            (f.indices for f in features.values() if f.indices is not None), np.arange(len(source))
        )
    return SourceRead(features, indices, lpips, vae, preprocessing)


# --- step 4: scores from features -----------------------------------------------------------------------


def score(
    plan: EvalPlan,
    reads: dict[str, SourceRead],
    real: ImageSource | None,
    fake: ImageSource,
    *,
    k: int = PRDC_K,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict:
    """The report's ``metrics`` (and the extractor lines, caveats) from what :func:`read_source` read."""
    metrics, out, report = set(plan.metrics), {}, {}
    fake_read, real_read = reads["fake"], reads.get("real")
    if plan.extractor is not None:
        report["extractor"], report["preprocessing"] = plan.extractor.name, plan.extractor.preprocessing
    if metrics & set(FEATURE_METRICS):
        real_f, fake_f = real_read.features["features"], fake_read.features["features"]
        if "fid" in metrics:
            out[plan.extractor.fd_name] = fid(real_f, fake_f)
        if "kid" in metrics:
            rescale = plan.extractor.kid_features is None
            result = kid(
                real_f, fake_f, num_subsets=kid_subsets, subset_size=kid_subset_size, rescale=rescale
            )
            out["kid"] = result.to_dict() | {"features": _kid_features(plan.extractor, result.scale)}
        if "prdc" in metrics:
            out["prdc"] = prdc(real_f, fake_f, k=k).to_dict()
        if "vendi" in metrics:
            out["vendi"] = {"fake": vendi(fake_f), "real": vendi(real_f)}
    if "lpips_diversity" in metrics:
        (fake_mean, count), (real_mean, _) = (read.lpips.result("all")[0] for read in (fake_read, real_read))
        out["lpips_diversity"] = {
            "fake": fake_mean, "real": real_mean, "pairs": count * (count - 1) // 2,
            "extractor": plan.lpips.name, "preprocessing": fake_read.lpips_preprocessing,
        }  # fmt: skip
    if "mode_coverage" in metrics:
        predicted = _predicted(fake_read)
        real_labels = real.labels[real_read.indices] if real.labels is not None else _predicted(real_read)
        result = mode_coverage(predicted, real_labels, num_classes=10)
        out["mode_coverage"] = {**result.to_dict(), "classifier": plan.classifier.weights_name}
    fake_labels = fake.labels[fake_read.indices] if fake.labels is not None else None
    if "class_accuracy" in metrics:
        out["class_accuracy"] = {
            "accuracy": float((_predicted(fake_read) == fake_labels).mean()),
            "images": len(fake_labels), "classifier": plan.classifier.weights_name,
        }  # fmt: skip
    if "per_class" in metrics:
        out["per_class"] = _per_class(plan, real_read, fake_read, real.labels, fake_labels)
    if plan.prompts is not None:
        out["prompts"] = _prompt_scores(plan, fake_read, metrics).to_dict()
        if plan.clip is not None:
            report["clip"] = {"name": plan.clip.name, "preprocessing": plan.clip.preprocessing}
    if real_read is not None and real_read.vae is not None:
        out["vae"] = {**real_read.vae.result().to_dict(), "source": real.name}
    if metrics & {"prdc", "vendi", "lpips_diversity", "per_class", "prompt_diversity"}:
        report["caveats"] = [DIVERSITY_CAVEAT]
    report["metrics"] = out
    return report


def _kid_features(extractor: FeatureExtractor, scale: float) -> str:
    if extractor.kid_features is not None:
        return extractor.kid_features
    return (
        f"{extractor.name} features divided by s = {scale:.4g}, the real features' root mean square, so "
        "that xᵀy / d is about 1 as the kernel assumes"
    )


def _predicted(read: SourceRead) -> np.ndarray:
    return read.features["logits"].features.argmax(1)


def _per_class(plan: EvalPlan, real_read, fake_read, real_labels, fake_labels) -> dict:
    real_features = real_read.features["features"].features
    fake_features = fake_read.features["features"].features
    lpips = {int(c): mean for c, (mean, _) in fake_read.lpips.result("class").items()}
    scores = per_class_scores(
        real_features, real_labels[real_read.indices], fake_features, fake_labels, lpips_values=lpips
    )
    counts = np.bincount(fake_labels)
    return {
        "scores": scores,
        "classes": int((counts > 0).sum()),
        "samples_per_class": {"min": int(counts[counts > 0].min()), "max": int(counts.max())},
        "features": plan.extractor.name,
    }


def _prompt_scores(plan: EvalPlan, read: SourceRead, metrics: set[str]):
    prompts, index = plan.prompts
    index = index[read.indices]
    clip = None
    if "clip_score" in metrics:
        embeds = read.features["clip" if "clip" in read.features else "features"].features
        clip = clip_scores(embeds, prompts, plan.clip, index)
    diversity = "prompt_diversity" in metrics
    features = read.features["features"].features if diversity else None
    lpips = read.lpips.result("prompt") if diversity else None
    return prompt_scores(prompts, index, features=features, clip=clip, lpips=lpips)


def _save_vae_grids(
    out: Path, vae: AtomVAEPipeline, real: ImageSource, samples: TensorSource
) -> dict[str, str]:
    """``reconstructions.png`` (32 real images, each beside its reconstruction) and ``prior-samples.png``
    (the first 64 prior samples); returns the file names, relative to ``out``."""
    originals = next(iter(real.batches(32)))
    pairs = torch.stack([originals, reconstruct(vae, originals)], 1).flatten(0, 1)
    files = {"reconstructions": "reconstructions.png", "prior_samples": "prior-samples.png"}
    save_image_grid(out / files["reconstructions"], pairs, nrow=16)
    save_image_grid(out / files["prior_samples"], samples.images[:64], nrow=8)
    return files
