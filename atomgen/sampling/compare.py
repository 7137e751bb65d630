"""``atomgen compare``: which sampling-time method, at which strength, is best on *your* conditional
pipeline — the CFG benchmark's procedure and statistics (:mod:`atomgen.benchmark.stats`) on any
class-conditional or prompt-conditioned pipeline (Stable Diffusion, SD3, Flux, PixArt).

1. **The CFG grid.** For each seed and each ``w`` of the grid, plain samples through :func:`sample` (so
   distributed and resumable): ``samples_per_class`` per class, each batch of one class, or
   ``per_prompt`` per prompt. A seed gives the same noise in every setting (the batches are laid out
   alike, their noise keyed by seed and batch index): settings are paired.
2. **Scores.** Class pipelines, per class against that class's real images (a dataset atomgen ships a
   classifier for, or your own labelled images: a ``.npz``, a folder of ``atomgen sample``), averaged
   over the classes compared (:class:`atomgen.benchmark.scoring.ClassScorer`): FID (FD on other
   features), precision, recall, density, coverage, Vendi, LPIPS diversity, on DINOv2 features when
   their weights are at hand (a folder, or the hub cache) and otherwise on the committed classifier's;
   and class accuracy (the adherence axis) from the dataset's classifier or the one named (a committed
   one, or a transformers image classifier: an ImageNet one for an ImageNet DiT). Prompt pipelines
   (:class:`atomgen.benchmark.scoring.PromptScorer`):
   the CLIP score (the adherence axis), the diversity within each prompt on DINOv2 features (Vendi and
   the DINO distance, averaged over prompts) and, with reference images per prompt (``real``: a folder
   of ``atomgen sample --prompts``), per-prompt FD, precision, recall, density and coverage.
3. **w\\*** (:func:`~atomgen.benchmark.stats.benchmark_scale`): the largest ``w`` at which the adherence
   (class accuracy, the CLIP score) still rises.
4. **Methods at w\\*.** Every ``--method NAME:STRENGTH`` is one setting; the strengths of one method (same
   name and options) form its sweep, and :func:`~atomgen.benchmark.stats.choose_strength` picks one
   (the largest recall at matched precision and adherence). Every setting gets its paired differences to
   plain CFG at ``w*`` and its gaps to CFG's own front on each axis, with 95 % t-intervals over seeds.
   A prompt pipeline without reference images has neither precision nor recall: its front is on the CLIP
   score alone, with the spread within a prompt (the DINO distance) as the gain — no diversity against
   a reference, so no gain at matched fidelity can be shown (the report says so).

Writes ``<out>/samples/seed-<k>/<setting>/`` (sample folders), ``<out>/scores/<extractor>-<key>/`` (one
JSON per scored folder, so a rerun scores nothing twice; the key hashes what else decides a score: the
real images, the classifier, the weights), and ``report.json`` (every score's per-seed values),
``report.md`` and ``report.png`` (the front). The options are in :mod:`.compare_config`, the report in
:mod:`.compare_report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from atomgen.benchmark.report import machine, write_reports
from atomgen.benchmark.stats import AXES, PROMPT_AXES, RISES, benchmark_scale
from atomgen.io import write_json

from .calls import PipelineCall
from .compare_config import DATASETS, EXTRACTORS, CompareConfig, Setting
from .compare_report import COLUMNS, METRICS, PROMPT_METRICS, build_report, markdown, plot
from .loading import load
from .processes import Processes, wait_until
from .sampler import SampleConfig, sample

logger = logging.getLogger(__name__)


def compare(config: CompareConfig) -> dict[str, Any] | None:
    """Run the comparison; return the report (``None`` on processes other than the main one)."""
    from atomgen.pipelines.methods import parse_method

    processes = Processes.from_environment()
    pipe = load(config.pipeline, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                allow_pickle=config.allow_pickle)  # fmt: skip
    call = PipelineCall.of(pipe)
    config.check(call.kind, call.pipeline)
    extractor = feature_space(config.extractor, config.extractor_weights, call.kind, config.classifier_name)
    axes, gain = front_axes(call.kind, config.real, extractor)
    if call.kind == "prompt" and config.real is not None:
        from atomgen.benchmark.scoring import reference_prompts

        reference_prompts(config.real, config.prompts)  # a reference folder lacking a prompt fails now
    reference = class_reference(config, call) if call.kind == "class" else None  # its errors come now
    logger.info("scores on %s features", extractor)
    score = _scorer(config, call.kind, extractor, pipe, reference)
    scores = _scores_folder(config, extractor)

    def rows(setting: Setting) -> list[dict[str, float]]:
        result = []
        for seed in range(config.seeds):
            folder = config.out / "samples" / f"seed-{seed}" / setting.folder
            cache = _scores_path(scores, seed, setting)
            one = sample_and_score(_sample_config(config, call, folder, seed, setting), pipe, cache, score)
            if one is not None:
                result.append(one)
        return result

    grid = {w: rows(Setting(w)) for w in sorted(config.scales)}
    w_star = _benchmark_scale(config, scores, grid, processes, axes[-1])
    methods = {spec: rows(Setting(w_star, spec)) for spec in config.methods}
    if not processes.is_main:
        return None
    specs = {s: parse_method(s) for s in config.methods}
    report = build_report(config, grid, w_star, methods, specs, axes=axes, gain=gain)
    report["extractor"] = extractor
    if reference is not None:
        report["classifier"] = reference.classifier.name
        report["real_images"] = int(np.isin(reference.labels, reference.classes).sum())
    report["machine"] = machine(pipe.device)
    write_reports(report, "report", [config.out], markdown, lambda path: plot(report, path))
    logger.info("wrote %s", config.out / "report.md")
    return report


@dataclass(frozen=True)
class ClassReference:
    """What a class pipeline is scored against, checked before anything is sampled.

    Attributes:
        labels: the real images' labels (:func:`~atomgen.benchmark.scoring.real_labels`; the scorer
            reads the images, :func:`~atomgen.benchmark.scoring.open_real`).
        classifier: the judge of class accuracy, its logits (:func:`atomgen.eval.load_classifier_logits`).
        classes: the classes compared.
    """

    labels: np.ndarray
    classifier: Any
    classes: tuple[int, ...]


def class_reference(config: CompareConfig, call: PipelineCall) -> ClassReference:
    """The real images and classifier of a class pipeline, checked: the classes compared within the
    pipeline's, real labels within them with at least ``PRDC_K + 1`` images of every class compared, and
    a classifier with an output for every class compared.

    Raises:
        ValueError: naming what does not fit, and what to do.
    """
    from atomgen.benchmark.scoring import check_real_classes, real_labels
    from atomgen.eval import load_classifier_logits

    count, name = call.num_classes, config.classifier_name
    assert count is not None and config.real is not None and name is not None  # CompareConfig.check
    classes = config.classes if config.classes is not None else tuple(range(count))
    if outside := sorted(c for c in classes if not 0 <= c < count):
        raise ValueError(
            f"--class-labels {outside}: out of range; {call.pipeline} has {count} classes, 0…{count - 1}"
        )
    labels = real_labels(config.real, config.real_limit)
    check_real_classes(labels, classes, count, config.real)
    classifier = load_classifier_logits(name)
    if classifier.dim <= max(classes):
        raise ValueError(
            f"--classifier {name} has {classifier.dim} outputs, but class {max(classes)} is compared: its "
            "output index must be the pipeline's class label (an ImageNet-1k classifier for an ImageNet DiT)"
        )
    return ClassReference(labels, classifier, classes)


def _scorer(
    config: CompareConfig, kind: str, extractor: str, pipe: Any, reference: ClassReference | None = None
) -> Callable[[torch.Tensor, np.ndarray], dict[str, float]]:
    """The score of one sample folder's images and their class labels or prompts; the models (but a class
    pipeline's classifier, loaded with its ``reference``) are loaded on first use, so a finished run
    reads its cached scores only."""
    from atomgen.benchmark.scoring import ClassScorer, PromptScorer, open_real

    scorer: Callable[[torch.Tensor, np.ndarray], dict[str, float]] | None = None

    def score(images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        nonlocal scorer
        if scorer is None and kind == "prompt":
            assert config.prompts is not None
            scorer = PromptScorer.load(
                config.prompts, pipe.device, extractor, config.extractor_weights, config.clip_weights,
                reference=config.real,
            )  # fmt: skip
        elif scorer is None:
            assert reference is not None and config.real is not None
            features = config.classifier_name if extractor == "classifier" else extractor
            resolution = images.shape[-1]  # a dataset's images at the samples' side, as training loads them
            scorer = ClassScorer.load(
                open_real(config.real, config.real_limit, resolution), reference.classifier, resolution,
                pipe.device, features, config.extractor_weights, classes=reference.classes,
            )  # fmt: skip
        return scorer(images, labels)

    return score


def front_axes(kind: str, real: str | None, extractor: str) -> tuple[tuple[str, ...], str]:
    """The front's axes (fidelity, then adherence) and its gain metric: precision and class accuracy
    with recall for class pipelines; precision and the CLIP score with recall for prompt pipelines with
    reference images; without them the CLIP score alone, with the spread within a prompt as the gain."""
    if kind != "prompt":
        return AXES, "recall"
    if real is not None:
        return PROMPT_AXES, "recall"
    from atomgen.benchmark.scoring import distance_name

    return ("clip_score",), distance_name(extractor)


def sample_and_score(
    config: SampleConfig,
    pipe: Any,
    cache: Path,
    score: Callable[[torch.Tensor, np.ndarray], dict[str, float]],
) -> dict[str, float] | None:
    """One setting of one seed: sample it through :func:`sample` (sharded over the processes, resumable,
    nothing to do when finished), then on the main process score the written images with ``score``
    (images in [0, 1], their class labels or prompts: :func:`read_samples`) and cache the scores in
    ``cache``. The benchmarks in ``bench/`` score every setting through this function, so their numbers
    are ``compare``'s.

    Returns:
        the scores (``None`` on processes other than the main one).
    """
    sample(config, pipe=pipe)
    if not Processes.from_environment().is_main:
        return None
    if not cache.is_file():
        write_json(cache, score(*read_samples(config.out)))
    return json.loads(cache.read_text())


def _sample_config(config: CompareConfig, call: PipelineCall, folder: Path, seed: int, setting: Setting):
    if call.kind == "prompt":
        conditioning: dict[str, Any] = {"prompts": config.prompts, "per_prompt": config.per_prompt}
    else:
        assert call.num_classes is not None
        count = call.num_classes if config.classes is None else len(config.classes)
        conditioning = {"num_samples": count * config.samples_per_class, "class_labels": config.classes}
    return SampleConfig(
        config.pipeline, folder, **conditioning, guidance_scale=setting.scale, steps=config.steps,
        dtype=config.dtype, device=config.device, batch_size=config.batch_size, seed=seed,
        methods=(setting.method,) if setting.method else (), call_options=dict(config.call_options),
        progress=config.progress,
    )  # fmt: skip


def feature_space(
    name: str | None, weights: str | None, kind: str = "class", classifier: str | None = None
) -> str:
    """The extractor the scores use: ``name``, or by default DINOv2 for a prompt pipeline (``kind``), and
    for a class pipeline when its weights are at hand offline (``weights``, or
    :data:`~atomgen.eval.hub_features.DINOV2_ID` in the hub cache) or its ``classifier`` is a
    transformers one, else the committed classifier's features."""
    from atomgen.eval.classifier import WEIGHTS

    committed = classifier is None or classifier in WEIGHTS
    if name is not None:
        if name not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {name!r}")
        if name == "classifier" and kind == "prompt":
            raise ValueError(
                "--extractor classifier: the dataset classifier's features are for class pipelines; score "
                "a prompt pipeline on dinov2 (the default), clip or inception features"
            )
        if name == "classifier" and not committed:
            raise ValueError(
                "--extractor classifier: the features of atomgen's committed classifiers "
                f"({', '.join(WEIGHTS)}: their feature layer); --classifier {classifier} is a transformers "
                "classifier, whose outputs are class scores, not a feature space to measure FD, precision "
                "and recall in: score on dinov2 (the default), clip or inception features"
            )
        return name
    if weights is not None or kind == "prompt" or not committed:
        return "dinov2"
    from huggingface_hub import try_to_load_from_cache

    from atomgen.eval.hub_features import DINOV2_ID

    cached = try_to_load_from_cache(DINOV2_ID, "config.json")
    return "dinov2" if isinstance(cached, str) else "classifier"


def _scores_folder(config: CompareConfig, extractor: str) -> Path:
    """One folder of score files per feature space and per what else decides a score: for class
    pipelines the real images (and their limit), the classifier and the extractor's weights, for prompts
    the CLIP model and the reference folder. Scores on other features, against other real images or
    from another classifier are never mixed."""
    from atomgen.eval.hub_features import CLIP_ID

    if config.prompts is None:
        identity = [_identity(config.real), config.real_limit, _identity(config.classifier_name),
                    _identity(config.extractor_weights)]  # fmt: skip
    else:
        identity = [config.clip_weights or CLIP_ID, _identity(config.real)]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:8]
    return config.out / "scores" / f"{extractor}-{key}"


def _identity(spec: str | None) -> str | None:
    """What a dataset, committed classifier or hub id is named, or the absolute path of a file or folder."""
    from atomgen.eval.classifier import WEIGHTS

    if spec is None or spec in DATASETS or spec in WEIGHTS or not Path(spec).exists():
        return spec
    return str(Path(spec).resolve())


def _scores_path(scores: Path, seed: int, setting: Setting) -> Path:
    return scores / f"seed-{seed}" / f"{setting.folder}.json"


def _benchmark_scale(
    config: CompareConfig, scores: Path, grid: dict[float, list], processes: Processes, adherence: str
) -> float:
    """w*: the main process scores the grid; the others, which score nothing, wait for its score files."""

    def path(w: float, seed: int) -> Path:
        return _scores_path(scores, seed, Setting(w))

    if not processes.is_main:
        wait_until(lambda: all(path(w, s).is_file() for w in grid for s in range(config.seeds)), interval=1.0)
        grid = {w: [json.loads(path(w, s).read_text()) for s in range(config.seeds)] for w in grid}
    means = {w: float(np.mean([r[adherence] for r in rows])) for w, rows in grid.items()}
    return benchmark_scale(means, rise=RISES[adherence])


def read_samples(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
    """A sample folder's images ``(N, C, H, W)`` in [0, 1] and their class labels (or, for a prompt
    pipeline's folder, their prompts), in manifest order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    entries = manifest["images"]
    arrays = [np.asarray(PIL.Image.open(folder / entry["file"])) for entry in entries]
    images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    key = "prompt" if entries[0].get("prompt") is not None else "class_label"
    labels = np.array([entry[key] for entry in entries])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, labels


__all__ = [
    "COLUMNS",
    "DATASETS",
    "EXTRACTORS",
    "METRICS",
    "PROMPT_METRICS",
    "ClassReference",
    "CompareConfig",
    "Setting",
    "build_report",
    "class_reference",
    "compare",
    "feature_space",
    "front_axes",
    "markdown",
    "read_samples",
    "sample_and_score",
]
