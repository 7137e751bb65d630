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
``report.md`` and ``report.png`` (the front).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from atomgen.benchmark.report import MACHINE, Series, cell, front_plot, machine, summary, table, write_reports
from atomgen.benchmark.stats import (
    AXES,
    PROMPT_AXES,
    RISES,
    benchmark_scale,
    choose_strength,
    front_gaps,
    grid_by_seed,
    grid_end,
)
from atomgen.io import write_json

from .calls import PipelineCall
from .loading import load
from .processes import Processes, wait_until
from .sampler import SampleConfig, sample

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist5k", "fashion-mnist")  # the datasets whose classifier atomgen ships
METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")
PROMPT_METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "dino_distance",
                  "cosine_distance", "clip_score")  # fmt: skip
COLUMNS = tuple(dict.fromkeys((*METRICS, *PROMPT_METRICS)))  # the report's columns, where scored
EXTRACTORS = ("classifier", "dinov2", "clip", "inception")  # compare's feature spaces
_FEATURES = {"classifier": "the committed classifier's", "dinov2": "DINOv2", "clip": "CLIP image",
             "inception": "Inception-v3"}  # fmt: skip


@dataclass(frozen=True)
class CompareConfig:
    """The options of ``atomgen compare``.

    Args:
        pipeline: a class-conditional or prompt-conditioned pipeline: a folder, an atomgen run directory
            or a hub id.
        real: class pipelines: the real images, a dataset atomgen ships a classifier for
            (:data:`DATASETS`), a ``.npz`` with ``images`` and ``labels``, or a folder written by ``atomgen
            sample`` (its ``manifest.json`` names each image's class label); labels are the pipeline's
            class ids, and every class compared needs at least 6 real images. Prompt pipelines: ``None``,
            or reference images of every prompt, a folder written by ``atomgen sample --prompts``.
        out: the output folder (resumable).
        scales: the grid of guidance scales ``w``.
        methods: ``NAME:STRENGTH[,KEY=VALUE…]`` settings; a method's strengths form its sweep.
        seeds: sampling seeds ``0 … seeds − 1``.
        samples_per_class: class pipelines: images per class, per setting and seed.
        prompts: prompt pipelines: the prompts (distinct).
        per_prompt: prompt pipelines: images per prompt, per setting and seed (at least 2, the pairs of
            the diversity within a prompt; at least 6 with ``real``, as per-prompt precision and recall
            use 5 nearest neighbours).
        steps: denoising steps (``None``: the pipeline's default).
        extractor: the feature space of the scores: ``"classifier"`` (a committed classifier's, class
            pipelines only), ``"dinov2"``, ``"clip"`` or ``"inception"``; ``None``: ``dinov2`` for
            prompt pipelines, and for class pipelines when its weights are available offline
            (``extractor_weights`` or the hub cache) or the classifier is a transformers one, else
            ``classifier``.
        extractor_weights: a folder or hub id for ``dinov2``/``clip``.
        clip_weights: prompt pipelines: the CLIP model of the CLIP score, a folder or hub id (default
            ``atomgen eval``'s, :data:`~atomgen.eval.hub_features.CLIP_ID`).
        classifier: class pipelines: the judge of class accuracy, ``digits``/``mnist``/``fashion`` (the
            committed ones) or a transformers image classifier (folder or hub id) whose output index is
            the class label; ``None``: the dataset's own (required when ``real`` is not a dataset).
        real_limit: class pipelines: use the first ``real_limit`` real images (of a dataset, the fixed
            subset of that many that training's ``data.limit`` takes); ``None``: all.
        classes: class pipelines: the classes compared (``None``: all); the others' real images are
            left out.
        batch_size, dtype, device, call_options, trust_remote_code, allow_pickle, progress: as for
            ``atomgen sample``.
    """

    pipeline: str
    real: str | None
    out: Path
    scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    methods: tuple[str, ...] = ()
    seeds: int = 3
    samples_per_class: int = 50
    steps: int | None = None
    batch_size: int = 16
    dtype: str = "fp32"
    device: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True
    extractor: str | None = None
    extractor_weights: str | None = None
    call_options: dict[str, Any] = field(default_factory=dict)
    prompts: tuple[str, ...] | None = None
    per_prompt: int | None = None
    clip_weights: str | None = None
    classifier: str | None = None
    real_limit: int | None = None
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        from atomgen.eval.per_class import PRDC_K
        from atomgen.pipelines.methods import parse_method

        object.__setattr__(self, "out", Path(self.out))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
            if len(set(self.prompts)) != len(self.prompts):
                twice = next(p for p in self.prompts if self.prompts.count(p) > 1)
                raise ValueError(f"--prompts names {twice!r} twice: each prompt is one group of the scores")
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct guidance scales, at least one; got {self.scales}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.real_limit is not None and self.real_limit < 1:
            raise ValueError(f"--real-limit must be a positive number of images, got {self.real_limit}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            if not self.classes or len(set(self.classes)) != len(self.classes):
                raise ValueError(
                    f"--class-labels must name distinct classes, at least one; got {self.classes}"
                )
        if self.prompts is None and self.samples_per_class < PRDC_K + 1:
            raise ValueError(
                f"samples_per_class ≥ {PRDC_K + 1} (precision and recall use {PRDC_K} nearest neighbours "
                f"per class) needed, got {self.samples_per_class}"
            )
        for method in self.methods:
            if parse_method(method).scale is None:
                raise ValueError(f"--method {method!r} gives no strength: write NAME:STRENGTH, e.g. atom:0.1")

    def check(self, kind: str, pipeline: str) -> None:
        """The options against the pipeline's kind (``class``, ``prompt`` or ``unconditional``).

        Raises:
            ValueError: naming the option that does not fit the pipeline, and what to pass instead.
        """
        from atomgen.eval.hub_classifier import IMAGENET_CLASSIFIER_ID
        from atomgen.eval.per_class import PRDC_K

        if kind == "class":
            if self.prompts is not None or self.per_prompt is not None:
                raise ValueError(
                    f"{pipeline} is class-conditional: it takes class labels, not prompts; leave out --prompts "
                    "and --per-prompt (--samples-per-class sets the images per class)"
                )
            if self.real is None:
                raise ValueError(
                    f"{pipeline}: a class-conditional pipeline is scored against a dataset atomgen ships a "
                    f"classifier for ({', '.join(DATASETS)}) or against real images of its classes (a .npz "
                    "with 'images' and 'labels', or a folder written by `atomgen sample`): pass --real"
                )
            if self.classifier_name is None:
                raise ValueError(
                    f"--real {self.real}: class accuracy, the adherence axis, needs a classifier: pass "
                    "--classifier (digits, mnist or fashion, atomgen's own, or a transformers image "
                    "classifier, a folder or hub id whose output index is the class label, e.g. "
                    f"{IMAGENET_CLASSIFIER_ID} for an ImageNet DiT)"
                )
        elif kind == "prompt":
            given = {
                "--classifier": self.classifier,
                "--real-limit": self.real_limit,
                "--class-labels": self.classes,
            }
            if named := [flag for flag, value in given.items() if value is not None]:
                raise ValueError(
                    f"{', '.join(named)}: options of class-conditional pipelines; {pipeline} is conditioned "
                    "on text (its adherence axis is the CLIP score): leave them out"
                )
            if not self.prompts:
                raise ValueError(
                    f"{pipeline} is conditioned on text: pass --prompts FILE (one prompt a line) and "
                    "--per-prompt K" + ("; the file has no prompt" if self.prompts is not None else "")
                )
            if self.real in DATASETS:
                raise ValueError(
                    f"--real {self.real}: a dataset of class images, which a prompt pipeline is not scored "
                    "against; for reference images per prompt pass a folder written by `atomgen sample "
                    "--prompts` with the same prompts, or leave --real out"
                )
            least = PRDC_K + 1 if self.real is not None else 2
            if self.per_prompt is None or self.per_prompt < least:
                why = (
                    f"per-prompt precision and recall against --real use {PRDC_K} nearest neighbours"
                    if self.real is not None
                    else "the diversity within a prompt needs pairs of its images"
                )
                raise ValueError(f"--per-prompt must be at least {least} ({why}), got {self.per_prompt}")
        else:
            raise ValueError(
                f"compare needs a class-conditional or prompt-conditioned pipeline (guidance needs a condition "
                f"to follow); {pipeline} is {kind}: sample it with `atomgen sample`, score it with `atomgen eval`"
            )

    @property
    def classifier_name(self) -> str | None:
        """The judge of class accuracy: ``classifier``, else the dataset's own (``None`` for real images of
        one's own)."""
        from atomgen.eval.plan import CLASSIFIER_OF_DATASET

        return self.classifier or CLASSIFIER_OF_DATASET.get(str(self.real))


@dataclass(frozen=True)
class Setting:
    """One sampled setting: plain CFG at ``scale`` (``method`` None) or one method spec at ``scale``."""

    scale: float
    method: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method or 'cfg'} w={self.scale:g}"

    @property
    def folder(self) -> str:
        return re.sub(r"[^\w.=-]+", "_", self.name)


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


def build_report(
    config: CompareConfig,
    grid: dict[float, list[dict[str, float]]],
    w_star: float,
    methods: dict[str, list[dict[str, float]]],
    specs: dict[str, Any],
    axes: Sequence[str] = AXES,
    gain: str = "recall",
) -> dict[str, Any]:
    """The report: per-seed values of every score, w*, the chosen strengths, paired differences to
    plain CFG at w* and the gaps to CFG's front on each of ``axes`` (fidelity, then adherence), with
    ``gain`` the metric the front trades."""
    reference = grid[w_star]

    def row(setting: Setting, rows: list[dict[str, float]], paired: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "setting": setting.name,
            "method": setting.method or "cfg",
            "scale": setting.scale,
        }
        for metric in (m for m in COLUMNS if m in rows[0]):
            values = [r[metric] for r in rows]
            entry[metric] = summary(values, [r[metric] for r in reference] if paired else None)
        return entry

    sweeps: dict[str, list[str]] = {}
    for spec_text, spec in specs.items():
        key = f"{spec.name}{json.dumps(spec.options, sort_keys=True) if spec.options else ''}"
        sweeps.setdefault(key, []).append(spec_text)
    mean = lambda rows: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}  # noqa: E731
    chosen = {}
    for key, members in sweeps.items():
        strengths = {specs[m].scale: m for m in members}
        best = choose_strength(
            {s: mean(methods[m]) for s, m in strengths.items()}, mean(reference), axes, gain
        )
        chosen[key] = {
            "setting": strengths[best],
            "strength": best,
            "grid_end": grid_end(best, list(strengths)),
        }
    front_grid = grid_by_seed(grid)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "axes": list(axes),
        "gain": gain,
        "benchmark_scale": w_star,
        "grid": [row(Setting(w), rows, paired=False) for w, rows in sorted(grid.items())],
        "methods": [
            row(Setting(w_star, m), rows, paired=True) | {"strength": specs[m].scale}
            for m, rows in methods.items()
        ],
        "chosen": chosen,
        "front": {
            Setting(w_star, m).name: {
                axis: gap.to_dict() for axis, gap in front_gaps(front_grid, rows, axes, gain).items()
            }
            for m, rows in methods.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    config = report["config"]
    axes, gain = report.get("axes", AXES), report.get("gain", "recall")
    shown = [m for m in COLUMNS if report["grid"] and m in report["grid"][0]]
    lines = [
        f"# atomgen compare: {config['pipeline']}" + (f" against {config['real']}" if config["real"] else ""),
        "",
        _setup(report),
        "",
        "## The CFG grid",
        "",
        *table(["setting", *shown], [[r["setting"], *(cell(r[m]) for m in shown)] for r in report["grid"]]),
        "",
        f"Benchmark scale w* = {report['benchmark_scale']:g}.",
    ]
    if report["methods"]:
        lines += [
            "",
            "## Methods at w*",
            "",
            *table(
                ["setting", *shown],
                [[r["setting"], *(cell(r[m], diff=True) for m in shown)] for r in report["methods"]],
            ),
            "",
            f"Chosen strengths (the largest {gain} at matched {' and '.join(axes)}): "
            + ", ".join(
                f"{key} → {c['strength']:g}"
                + (f" (at the {c['grid_end']} of its sweep: extend it)" if c["grid_end"] else "")
                for key, c in report["chosen"].items()
            ),
            "",
            "## Against CFG's own front",
            "",
        ]
        body = []
        for name, gaps in report["front"].items():
            for axis in axes:
                gap = gaps[axis]
                other = _interval(gap["other_diff"]) if gap["other_diff"] is not None else "— (one axis)"
                body.append([name, axis, _interval(gap["gain"]), other, "yes" if gap["beats"] else "no"])
        lines += table(["setting", "front on", f"{gain} gain", "other axis Δ", "beats the front"], body)
    if "machine" in report:
        lines += ["", MACHINE.format(**report["machine"])]
    return "\n".join(lines) + "\n"


def _setup(report: dict[str, Any]) -> str:
    """The report's first paragraph: what was sampled and how each score is taken."""
    config, gain = report["config"], report.get("gain", "recall")
    extractor = report.get("extractor", "classifier")
    features = _FEATURES[extractor] + (" (FD_DINOv2 in the FID column)" if extractor == "dinov2" else "")
    paired = (
        "Δ = paired difference to plain CFG at w*, [95 % t-interval over seeds]; an interval containing 0 "
        "is not a result. report.json holds every score's per-seed values."
    )
    if not config.get("prompts"):
        classes = f" of classes {', '.join(map(str, config['classes']))}" if config.get("classes") else ""
        real = f" ({report['real_images']} images)" if "real_images" in report else ""
        judge = report.get("classifier", "the dataset classifier")
        return (
            f"{config['seeds']} seed(s), {config['samples_per_class']} samples per class{classes} per setting; "
            f"the same noise in every setting of a seed. Per-class scores against {config['real']}{real} on "
            f"{features} features, averaged over classes; accuracy = {judge} agrees with the requested label. "
            f"{paired}"
        )
    from atomgen.eval.hub_features import CLIP_ID

    text = (
        f"{config['seeds']} seed(s), {len(config['prompts'])} prompts × {config['per_prompt']} images per "
        "setting; the same noise in every setting of a seed. clip_score = 100 × max(cos, 0) of the CLIP "
        f"image and prompt embeddings ({config.get('clip_weights') or CLIP_ID}), the mean over images: the "
        f"adherence axis. Diversity within each prompt on {_FEATURES[extractor]} features, averaged over "
        "prompts: vendi, and the mean pairwise cosine distance "
        f"({'dino_distance' if extractor == 'dinov2' else 'cosine_distance'})."
    )
    if config["real"]:
        return (
            f"{text} Against {config['real']}: each prompt's samples against that prompt's reference images "
            f"on {features} features (FD, precision, recall, density, coverage; 5 neighbours), averaged over "
            f"prompts. {paired}"
        )
    return (
        f"{text} {paired}\n\n**No reference images (--real): no fidelity axis, no recall.** The front is on "
        f"the CLIP score alone, and its gain, {gain}, is the spread of the images within a prompt, not "
        "diversity against a reference: images scattered off the data raise it too, so this report cannot "
        "show a diversity gain at matched fidelity. Pass --real (a folder of `atomgen sample --prompts` with "
        "reference images of every prompt) for precision and recall."
    )


def _interval(value: dict[str, Any]) -> str:
    from atomgen.benchmark.stats import format_interval

    return format_interval(value["mean"], value["low"], value["high"])


def plot(report: dict[str, Any], path: Path) -> None:
    """The gain (recall) against each axis of the front: CFG's grid as a line, the methods as markers."""
    gain, panels = report.get("gain", "recall"), []
    for axis in report.get("axes", AXES):
        grid = report["grid"]
        series = [Series("CFG", [r[axis]["mean"] for r in grid], [r[gain]["mean"] for r in grid], True,
                         [f"w={r['scale']:g}" for r in grid])]  # fmt: skip
        series += [Series(r["setting"], [r[axis]["mean"]], [r[gain]["mean"]]) for r in report["methods"]]
        panels.append((report["config"]["pipeline"], axis, series))
    front_plot(panels, path, ylabel=gain)


__all__ = [
    "COLUMNS",
    "DATASETS",
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
    "read_samples",
    "sample_and_score",
]
