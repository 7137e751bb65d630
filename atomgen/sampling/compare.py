"""``atomgen compare``: which sampling-time method, at which strength, is best on *your* class-conditional
pipeline — the CFG benchmark's procedure and statistics (:mod:`atomgen.benchmark.stats`) on any pipeline.

1. **The CFG grid.** For each seed and each ``w`` of the grid, plain samples through :func:`sample` (so
   distributed and resumable): ``samples_per_class`` per class, each batch of one class. A seed gives
   the same noise in every setting (the batches are laid out alike, their noise keyed by seed and batch
   index): settings are paired.
2. **Scores**, per class against that class's real images, averaged over classes
   (:class:`atomgen.benchmark.scoring.ClassScorer`): FID (FD on other features), precision, recall,
   density, coverage, Vendi, LPIPS diversity, on DINOv2 features when their weights are at hand (a
   folder, or the hub cache) and otherwise on the dataset classifier's; and class accuracy from the
   dataset classifier (the adherence axis).
3. **w\\*** (:func:`~atomgen.benchmark.stats.benchmark_scale`): the largest ``w`` at which class accuracy
   still rises.
4. **Methods at w\\*.** Every ``--method NAME:STRENGTH`` is one setting; the strengths of one method (same
   name and options) form its sweep, and :func:`~atomgen.benchmark.stats.choose_strength` picks one
   (the largest recall at matched precision and accuracy). Every setting gets its paired differences to
   plain CFG at ``w*`` and its gaps to CFG's own front on both axes, with 95 % t-intervals over seeds.

Writes ``<out>/samples/seed-<k>/<setting>/`` (sample folders), ``<out>/scores/`` (one JSON per scored
folder, so a rerun scores nothing twice), and ``report.json`` (every score's per-seed values),
``report.md`` and ``report.png`` (the front).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from atomgen.benchmark.report import MACHINE, Series, cell, front_plot, machine, summary, table, write_reports
from atomgen.benchmark.stats import AXES, benchmark_scale, choose_strength, front_gaps, grid_by_seed, grid_end
from atomgen.io import write_json

from .calls import PipelineCall
from .loading import load
from .processes import Processes, wait_until
from .sampler import SampleConfig, sample

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist5k", "fashion-mnist")  # the datasets whose classifier atomgen ships
METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")
EXTRACTORS = ("classifier", "dinov2", "clip", "inception")  # compare's feature spaces
_FEATURES = {
    "classifier": "the dataset classifier's",
    "dinov2": "DINOv2 (FD_DINOv2 in the FID column)",
    "clip": "CLIP image",
    "inception": "Inception-v3",
}


@dataclass(frozen=True)
class CompareConfig:
    """The options of ``atomgen compare``.

    Args:
        pipeline: a class-conditional pipeline: a folder, an atomgen run directory or a hub id.
        real: the real images and classifier, a dataset atomgen ships a classifier for (:data:`DATASETS`).
        out: the output folder (resumable).
        scales: the grid of guidance scales ``w``.
        methods: ``NAME:STRENGTH[,KEY=VALUE…]`` settings; a method's strengths form its sweep.
        seeds: sampling seeds ``0 … seeds − 1``.
        samples_per_class: images per class, per setting and seed.
        steps: denoising steps (``None``: the pipeline's default).
        extractor: the feature space of the scores: ``"classifier"`` (the dataset classifier's),
            ``"dinov2"``, ``"clip"`` or ``"inception"``; ``None``: ``dinov2`` when its weights are
            available offline (``extractor_weights`` or the hub cache), else ``classifier``.
        extractor_weights: a folder or hub id for ``dinov2``/``clip``.
        batch_size, dtype, device, call_options, trust_remote_code, allow_pickle, progress: as for
            ``atomgen sample``.
    """

    pipeline: str
    real: str
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

    def __post_init__(self) -> None:
        from atomgen.pipelines.methods import parse_method

        object.__setattr__(self, "out", Path(self.out))
        if self.real not in DATASETS:
            raise ValueError(
                f"--real {self.real!r}: compare scores against a dataset whose classifier atomgen ships "
                f"({', '.join(DATASETS)}); class accuracy needs one"
            )
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct guidance scales, at least one; got {self.scales}")
        if self.seeds < 1 or self.samples_per_class < 6:  # per-class PRDC takes k = 5 neighbours
            raise ValueError(
                f"seeds ≥ 1 and samples_per_class ≥ 6 (precision and recall use 5 nearest neighbours per "
                f"class) needed, got {self.seeds} and {self.samples_per_class}"
            )
        for method in self.methods:
            if parse_method(method).scale is None:
                raise ValueError(f"--method {method!r} gives no strength: write NAME:STRENGTH, e.g. atom:0.1")


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
    from atomgen.benchmark.scoring import ClassScorer
    from atomgen.pipelines.methods import parse_method

    processes = Processes.from_environment()
    pipe = load(config.pipeline, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                allow_pickle=config.allow_pickle)  # fmt: skip
    call = PipelineCall.of(pipe)
    if call.kind != "class":
        raise ValueError(
            f"compare scores class-conditional pipelines; {call.pipeline} takes {call.kind} input"
        )
    scorer: ClassScorer | None = None
    extractor = feature_space(config.extractor, config.extractor_weights)
    logger.info("scores on %s features", extractor)

    def score(images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        nonlocal scorer
        if scorer is None:  # built on first use: a finished run reads its cached scores only
            scorer = ClassScorer.for_dataset(
                config.real, images.shape[-1], None, pipe.device,
                extractor=None if extractor == "classifier" else extractor, weights=config.extractor_weights,
            )  # fmt: skip
        return scorer(images, labels)

    def rows(setting: Setting) -> list[dict[str, float]]:
        result = []
        for seed in range(config.seeds):
            folder = config.out / "samples" / f"seed-{seed}" / setting.folder
            cache = _scores_path(config, extractor, seed, setting)
            scores = sample_and_score(_sample_config(config, call, folder, seed, setting), pipe, cache, score)
            if scores is not None:
                result.append(scores)
        return result

    grid = {w: rows(Setting(w)) for w in sorted(config.scales)}
    w_star = _benchmark_scale(config, extractor, grid, processes)
    methods = {spec: rows(Setting(w_star, spec)) for spec in config.methods}
    if not processes.is_main:
        return None
    report = build_report(config, grid, w_star, methods, {s: parse_method(s) for s in config.methods})
    report["extractor"] = extractor
    report["machine"] = machine(pipe.device)
    write_reports(report, "report", [config.out], markdown, lambda path: plot(report, path))
    logger.info("wrote %s", config.out / "report.md")
    return report


def sample_and_score(
    config: SampleConfig,
    pipe: Any,
    cache: Path,
    score: Callable[[torch.Tensor, np.ndarray], dict[str, float]],
) -> dict[str, float] | None:
    """One setting of one seed: sample it through :func:`sample` (sharded over the processes, resumable,
    nothing to do when finished), then on the main process score the written images with ``score``
    (images in [0, 1], their class labels) and cache the scores in ``cache``. The benchmarks in
    ``bench/`` score every setting through this function, so their numbers are ``compare``'s.

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
    assert call.num_classes is not None
    return SampleConfig(
        config.pipeline, folder, num_samples=call.num_classes * config.samples_per_class,
        guidance_scale=setting.scale, steps=config.steps, dtype=config.dtype, device=config.device,
        batch_size=config.batch_size, seed=seed, methods=(setting.method,) if setting.method else (),
        call_options=dict(config.call_options), progress=config.progress,
    )  # fmt: skip


def feature_space(name: str | None, weights: str | None) -> str:
    """The extractor the scores use: ``name``, or by default DINOv2 when its weights are at hand offline
    (``weights``, or :data:`~atomgen.eval.hub_features.DINOV2_ID` in the hub cache), else the dataset
    classifier's features."""
    if name is not None:
        if name not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {name!r}")
        return name
    if weights is not None:
        return "dinov2"
    from huggingface_hub import try_to_load_from_cache

    from atomgen.eval.hub_features import DINOV2_ID

    cached = try_to_load_from_cache(DINOV2_ID, "config.json")
    return "dinov2" if isinstance(cached, str) else "classifier"


def _scores_path(config: CompareConfig, extractor: str, seed: int, setting: Setting) -> Path:
    """One score file per feature space, seed and setting: scores on other features are never mixed."""
    return config.out / "scores" / extractor / f"seed-{seed}" / f"{setting.folder}.json"


def _benchmark_scale(
    config: CompareConfig, extractor: str, grid: dict[float, list], processes: Processes
) -> float:
    """w*: the main process scores the grid; the others, which score nothing, wait for its score files."""

    def scores(w: float, seed: int) -> Path:
        return _scores_path(config, extractor, seed, Setting(w))

    if not processes.is_main:
        wait_until(
            lambda: all(scores(w, s).is_file() for w in grid for s in range(config.seeds)), interval=1.0
        )
        grid = {w: [json.loads(scores(w, s).read_text()) for s in range(config.seeds)] for w in grid}
    return benchmark_scale({w: float(np.mean([r["accuracy"] for r in rows])) for w, rows in grid.items()})


def read_samples(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
    """A sample folder's images ``(N, C, H, W)`` in [0, 1] and their class labels, in manifest order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = [np.asarray(PIL.Image.open(folder / entry["file"])) for entry in manifest["images"]]
    images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    labels = np.array([entry["class_label"] for entry in manifest["images"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, labels


def build_report(
    config: CompareConfig,
    grid: dict[float, list[dict[str, float]]],
    w_star: float,
    methods: dict[str, list[dict[str, float]]],
    specs: dict[str, Any],
) -> dict[str, Any]:
    """The report: per-seed values of every score, w*, the chosen strengths, paired differences to
    plain CFG at w* and the gaps to CFG's front on both axes."""
    reference = grid[w_star]

    def row(setting: Setting, rows: list[dict[str, float]], paired: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "setting": setting.name,
            "method": setting.method or "cfg",
            "scale": setting.scale,
        }
        for metric in (m for m in METRICS if m in rows[0]):
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
        best = choose_strength({s: mean(methods[m]) for s, m in strengths.items()}, mean(reference))
        chosen[key] = {
            "setting": strengths[best],
            "strength": best,
            "grid_end": grid_end(best, list(strengths)),
        }
    front_grid = grid_by_seed(grid)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "benchmark_scale": w_star,
        "grid": [row(Setting(w), rows, paired=False) for w, rows in sorted(grid.items())],
        "methods": [
            row(Setting(w_star, m), rows, paired=True) | {"strength": specs[m].scale}
            for m, rows in methods.items()
        ],
        "chosen": chosen,
        "front": {
            Setting(w_star, m).name: {
                axis: gap.to_dict() for axis, gap in front_gaps(front_grid, rows).items()
            }
            for m, rows in methods.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    config = report["config"]
    shown = [m for m in METRICS if report["grid"] and m in report["grid"][0]]
    lines = [
        f"# atomgen compare: {config['pipeline']} against {config['real']}",
        "",
        f"{config['seeds']} seed(s), {config['samples_per_class']} samples per class per setting; the same "
        f"noise in every setting of a seed. Per-class scores on {_FEATURES[report.get('extractor', 'classifier')]}"
        " features, averaged over classes; accuracy = the dataset classifier agrees with the requested label. "
        "Δ = paired difference to "
        "plain CFG at w*, [95 % t-interval over seeds]; an interval containing 0 is not a result. "
        "report.json holds every score's per-seed values.",
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
            "Chosen strengths (the largest recall at matched precision and accuracy): "
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
            for axis in AXES:
                gap = gaps[axis]
                body.append(
                    [
                        name,
                        axis,
                        _interval(gap["gain"]),
                        _interval(gap["other_diff"]),
                        "yes" if gap["beats"] else "no",
                    ]
                )
        lines += table(["setting", "front on", "recall gain", "other axis Δ", "beats the front"], body)
    if "machine" in report:
        lines += ["", MACHINE.format(**report["machine"])]
    return "\n".join(lines) + "\n"


def _interval(value: dict[str, Any]) -> str:
    from atomgen.benchmark.stats import format_interval

    return format_interval(value["mean"], value["low"], value["high"])


def plot(report: dict[str, Any], path: Path) -> None:
    """Recall against precision and against class accuracy: CFG's grid as a line, the methods as markers."""
    panels = []
    for axis in AXES:
        grid = report["grid"]
        series = [Series("CFG", [r[axis]["mean"] for r in grid], [r["recall"]["mean"] for r in grid], True,
                         [f"w={r['scale']:g}" for r in grid])]  # fmt: skip
        series += [Series(r["setting"], [r[axis]["mean"]], [r["recall"]["mean"]]) for r in report["methods"]]
        panels.append((report["config"]["pipeline"], axis, series))
    front_plot(panels, path)


__all__ = [
    "DATASETS",
    "METRICS",
    "CompareConfig",
    "Setting",
    "build_report",
    "compare",
    "read_samples",
    "sample_and_score",
]
