"""Diversity under classifier-free guidance: atom guidance against the interval, APG, CADS and Particle
Guidance on class-conditional DDPMs; tuned on mnist5k, confirmed untouched on Fashion-MNIST.

    python bench/cfg.py --out runs/cfg                       # the CPU preset, staged and resumable
    python bench/cfg.py --out runs/cfg --datasets mnist5k --seeds 1   # one stage of it
    python bench/cfg.py --out /tmp/cfg --dry-run             # every code path at toy sizes
    python bench/cfg.py --out runs/cfg-gpu --preset gpu      # bench/gpu.sh: larger sets, more steps

Stages, each resumable (a finished model or score file is never redone):

1. **Models**: one class-conditional DDPM per dataset and seed (``configs/<dataset>-cfg.yaml``: 16×16,
   v-prediction, 10 % label dropout), trained by :func:`atomgen.train.train`.
2. **The CFG grid**: plain CFG at every ``w`` of :attr:`Preset.scales` (``w = 1`` is unguided). The
   benchmark scale ``w*`` is the largest ``w`` at which the mean class accuracy still rises over the
   previous ``w`` by more than 0.001 (:func:`benchmark_scale`); the report shows whether precision rises and recall and
   coverage fall along the grid, as they do at scale.
3. **The methods at w\\***, each with its own strength sweep, on the tuning dataset (mnist5k): the
   guidance interval, APG, CADS, Particle Guidance, latent-gradient atom guidance (normalised),
   feature-space atom guidance, and atom guidance combined with the interval and with APG. Each method's
   strength is chosen by :func:`choose_strength`: the largest mean recall among the strengths whose mean
   precision is within 0.01 of plain CFG's and whose class accuracy is at most 1 point lower.
4. **Confirmation**: the chosen strengths, unchanged, at the other dataset's own ``w*``.

Every setting of one seed samples the same classes from the same initial noise and the same noise at
every step (DDIM with η = 1, ancestral: see :attr:`Preset.eta`), so the comparison with plain CFG is paired. Scores are computed per class against that class's real images on
the dataset classifier's features and averaged over classes (FID, precision, recall, density, coverage,
Vendi, LPIPS diversity); class accuracy is the share of samples the classifier gives the requested label.
The report gives mean ± std over seeds and, for each method, the paired difference to plain CFG at the
same ``w`` with a 95 % t-interval over seeds; an interval that contains 0 is not a result.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomgen.eval.run import CLASSIFIER_OF_DATASET as CLASSIFIER  # dataset → its classifier

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import format_interval, paired_interval

logger = logging.getLogger("bench.cfg")

TUNE, CONFIRM = "mnist5k", "fashion-mnist"

METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")
HIGHER_IS_BETTER = {m: m != "fid" for m in METRICS}
PRECISION_SLACK, ACCURACY_SLACK = 0.01, 0.01  # "matched precision" and "at most 1 point lower"
ACCURACY_RISE = 0.001  # a smaller rise is 2 of 2,000 samples: the DiT flow reaches accuracy 1.000
PEERS = ("interval", "apg", "cads", "pg")  # what atom guidance must beat at matched precision


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark run."""

    seeds: int = 3
    steps: int | None = None  # training steps (None: the config's)
    samples_per_class: int = 200  # 2,000 per setting over 10 classes
    inference_steps: int = 15
    # η of DDIM: 1 is ancestral (DDPM-like) sampling. With η = 0 (deterministic) at 15 steps this
    # model's CFG breaks from w = 1.5 on (class accuracy falls, FID 89 at w = 1.75); the fresh noise of
    # every step corrects that drift, and accuracy rises to w = 2 as it does at scale.
    eta: float = 1.0
    # 1.25 tests whether a method's gain is more than a smaller w gives (the front between 1 and 1.5)
    scales: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    # each method's strength sweep (the interval: the step fraction where guidance starts)
    strengths: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("interval", (0.2, 0.4)),
        ("apg", (0.0, 0.5)),
        ("cads", (0.1, 0.25)),
        ("pg", (0.05, 0.1, 0.2)),
        ("atom", (0.02, 0.05, 0.1)),  # 0.05 already cost 0.014 precision on mnist5k
        ("atom-feature", (0.1, 0.2, 0.4)),
    )
    combined: tuple[str, ...] = ("atom+interval", "atom+apg")
    batch_size: int = 500
    # the strength sweeps run on the first `tune_seeds` seeds (None: all); the chosen strengths on all
    tune_seeds: int | None = 1
    combined_seeds: int | None = 1  # the combined methods' seeds (None: all); 2 CPU cores ran out of time

    @classmethod
    def named(cls, name: str) -> Preset:
        if name == "cpu":
            return cls()
        if name == "gpu":
            return cls(
                seeds=5,
                samples_per_class=500,
                inference_steps=25,
                batch_size=5000,
                tune_seeds=None,
                combined_seeds=None,
            )
        if name == "dry-run":
            return cls(
                seeds=2,
                steps=4,
                samples_per_class=6,
                inference_steps=2,
                scales=(1.0, 2.0, 3.0),
                strengths=tuple((m, s[:1]) for m, s in cls.strengths),
                batch_size=20,
            )
        raise ValueError(f"unknown preset {name!r}; known: cpu, gpu, dry-run")

    def only(self, methods: list[str]) -> Preset:
        """This preset with the given methods only (each combined one needs all of its parts)."""
        missing = {p for name in methods if "+" in name for p in name.split("+")} - set(methods)
        if missing:
            raise SystemExit(f"--methods: the combined methods also need {sorted(missing)}")
        return dataclasses.replace(
            self,
            strengths=tuple((m, s) for m, s in self.strengths if m in methods),
            combined=tuple(c for c in self.combined if c in methods),
        )


@dataclass(frozen=True)
class Setting:
    """One way of sampling: ``method`` at ``strength`` on top of CFG at ``scale``."""

    method: str  # "cfg", or a method of Preset.strengths / Preset.combined
    scale: float
    strength: float = 0.0
    parts: tuple[tuple[str, float], ...] = ()  # the strengths of a combined method's parts

    @property
    def name(self) -> str:
        if self.method == "cfg":
            return f"cfg-w{self.scale:g}"
        detail = "+".join(f"{p}{s:g}" for p, s in self.parts) if self.parts else f"{self.strength:g}"
        return f"{self.method}-{detail}-w{self.scale:g}"


# ------------------------------------------------------------------------------------------ sampling
@contextmanager
def installed(pipe: Any, setting: Setting, generator: torch.Generator) -> Iterator[dict[str, Any]]:
    """Install the setting's method on ``pipe``; yields the extra call arguments (a guider)."""
    from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance

    from atomgen.pipelines import CADS, ParticleGuidance, guide, guide_features

    parts = dict(setting.parts) if setting.parts else {setting.method: setting.strength}
    handles, call = [], {}
    for method, strength in parts.items():
        if method == "interval":  # guidance off for the noisiest `strength` of the steps (Kynkäänniemi)
            call["guider"] = ClassifierFreeGuidance(guidance_scale=setting.scale, start=strength)
        elif method == "apg":  # η: the weight kept of the update parallel to the conditional prediction
            call["guider"] = AdaptiveProjectedGuidance(guidance_scale=setting.scale, eta=strength)
        elif method == "cads":
            handles.append(CADS(pipe, noise_scale=strength, generator=generator))
        elif method == "pg":
            handles.append(ParticleGuidance(pipe, strength=strength, normalize=True))
        elif method == "atom":
            handles.append(guide(pipe, strength=strength, normalize=True))
        elif method == "atom-feature":
            handles.append(guide_features(pipe, strength=strength))
        elif method != "cfg":
            raise ValueError(f"unknown method {method!r}")
    try:
        yield call
    finally:
        for handle in handles:
            handle.remove()


def sample(
    pipe: Any, setting: Setting, seed: int, preset: Preset, classes: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Balanced samples of every class, in [0, 1], and their requested labels; the noise depends on the
    seed and the batch only, so every setting of a seed starts from the same latents."""
    labels = np.repeat(np.arange(classes), preset.samples_per_class)
    images = []
    for start in range(0, len(labels), preset.batch_size):
        batch = torch.from_numpy(labels[start : start + preset.batch_size])
        noise = torch.Generator().manual_seed(seed * 1_000_003 + start)
        latents = pipe.prepare_latents(len(batch), noise)
        step_noise = torch.Generator().manual_seed(seed * 1_000_019 + start)  # the noise of every step
        eta = 0.0 if getattr(pipe, "is_flow_matching", False) else preset.eta  # flow: deterministic Euler
        method_noise = torch.Generator().manual_seed(seed * 1_000_033 + start)  # CADS's own draws
        with installed(pipe, setting, method_noise) as extra:
            out = pipe(
                class_labels=batch,
                guidance_scale=setting.scale,
                num_inference_steps=preset.inference_steps,
                eta=eta,
                generator=step_noise,
                latents=latents,
                output_type="pt",
                **extra,
            )
        images.append(out.images.cpu())
    return torch.cat(images), labels


# ------------------------------------------------------------------------------------------ scoring
class Scorer:
    """Per-class scores on the dataset classifier's features, averaged over classes."""

    def __init__(self, dataset: str, resolution: int, limit: int | None, device: torch.device):
        from atomgen.data import load_dataset
        from atomgen.eval import LPIPSFeatures, load_digit_classifier, load_extractor

        data = load_dataset(dataset, resolution=resolution, channels=1, limit=limit)
        self.real = ((data.images + 1) / 2).clamp(0, 1)
        self.real_labels = data.labels.numpy()
        self.extractor = load_extractor(CLASSIFIER[dataset], device)
        self.classifier = load_digit_classifier(CLASSIFIER[dataset]).to(device)
        self.lpips = LPIPSFeatures().fit_to(resolution).to(device)
        self.real_features = self._features(self.real)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> np.ndarray:
        device = next(self.extractor.parameters()).device
        return torch.cat([self.extractor(b.to(device)).cpu() for b in images.split(500)]).double().numpy()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        from atomgen.eval import classify, per_class_scores

        features = self._features(images)
        scores = per_class_scores(
            self.real_features, self.real_labels, features, labels, images=images, lpips=self.lpips
        )
        return {**scores, "accuracy": float((classify(images, self.classifier) == labels).mean())}


# ------------------------------------------------------------------------------------------ the rules
def benchmark_scale(grid: dict[float, float]) -> float:
    """The largest ``w`` at which the mean class accuracy still rises over the previous ``w`` (by more
    than :data:`ACCURACY_RISE`: at saturation a rise of 0.999 → 1.000 is noise, not guidance at work)."""
    scales = sorted(grid)
    chosen = scales[0]
    for previous, scale in itertools.pairwise(scales):
        if grid[scale] <= grid[previous] + ACCURACY_RISE:
            break
        chosen = scale
    return chosen


def admissible(candidate: dict[str, float], cfg: dict[str, float]) -> bool:
    """Matched fidelity: precision within 0.01 of plain CFG's, class accuracy at most 1 point lower."""
    return (
        candidate["precision"] >= cfg["precision"] - PRECISION_SLACK
        and candidate["accuracy"] >= cfg["accuracy"] - ACCURACY_SLACK
    )


def choose_strength(candidates: dict[float, dict[str, float]], cfg: dict[str, float]) -> float:
    """The admissible strength with the largest mean recall; none admissible: the highest precision."""
    passing = [s for s, scores in candidates.items() if admissible(scores, cfg)]
    if passing:
        return max(passing, key=lambda s: candidates[s]["recall"])
    return max(candidates, key=lambda s: candidates[s]["precision"])


# ------------------------------------------------------------------------------------------ the runs
class Bench:
    """The stages above, writing ``<out>/<dataset>/seed<k>/{model,scores}`` and the report."""

    def __init__(
        self,
        out: Path,
        preset: Preset,
        progress: bool = True,
        grid_only: bool = False,
        model: str = "cfg",
        cached_only: bool = False,
    ):
        self.out, self.preset, self.progress, self.grid_only = out, preset, progress, grid_only
        self.model = model  # the models are configs/<dataset>-<model>.yaml
        # report on the scores already written, from the seeds that have all a table needs: an interim
        # report of a benchmark still running (it never trains or samples)
        self.cached_only = cached_only
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.scorers: dict[str, Scorer] = {}

    def config(self, dataset: str, seed: int):
        from atomgen.train.config import ExperimentConfig

        overrides = [f"train.seed={seed}", f"train.output_dir={self.out / dataset / f'seed{seed}' / 'model'}"]
        if self.preset.steps is not None:
            overrides += [f"train.steps={self.preset.steps}", f"train.checkpoint_every={self.preset.steps}"]
        path = Path(f"configs/{dataset}-{self.model}.yaml")
        if not path.is_file():
            known = sorted(p.name for p in Path("configs").glob(f"*-{self.model}.yaml"))
            raise SystemExit(
                f"no model config {path} for dataset {dataset!r} (with --model {self.model}: {known})"
            )
        return ExperimentConfig.from_yaml(path, overrides)

    def pipeline(self, dataset: str, seed: int):
        from atomgen.pipelines import AtomClassConditionalPipeline
        from atomgen.train import train

        config = self.config(dataset, seed)
        folder = Path(config.train.output_dir) / "pipeline"
        if not (folder / "model_index.json").is_file():
            logger.info("training %s seed %d", dataset, seed)
            resume = "latest" if (Path(config.train.output_dir) / "checkpoints").is_dir() else None
            train(config, resume=resume, progress=self.progress)
        pipe = AtomClassConditionalPipeline.from_pretrained(folder).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def score(
        self, dataset: str, seed: int, setting: Setting, pipe: Callable | None = None
    ) -> dict[str, float]:
        path = self._path(dataset, seed, setting)
        if path.is_file():
            return json.loads(path.read_text())["scores"]
        from atomgen.io import write_json

        pipe = pipe or self.pipeline(dataset, seed)
        config = self.config(dataset, seed)
        if dataset not in self.scorers:
            self.scorers[dataset] = Scorer(dataset, config.data.resolution, config.data.limit, self.device)
        started = time.perf_counter()
        images, labels = sample(pipe, setting, seed, self.preset, config.model.num_classes)
        seconds = time.perf_counter() - started
        scores = self.scorers[dataset](images, labels)
        write_json(
            path, {"setting": dataclasses.asdict(setting), "scores": scores, "sample_seconds": seconds}
        )
        logger.info("%s seed %d %s: %s", dataset, seed, setting.name, _brief(scores))
        return scores

    def _path(self, dataset: str, seed: int, setting: Setting) -> Path:
        return self.out / dataset / f"seed{seed}" / "scores" / f"{setting.name}.json"

    def scores(
        self, dataset: str, settings: list[Setting], seeds: int | None = None
    ) -> dict[Setting, list[dict[str, float]]]:
        """Every setting on the first ``seeds`` seeds (default: all; one pipeline load per seed).
        With ``cached_only``, the first seeds that have every setting scored already."""
        table: dict[Setting, list[dict[str, float]]] = {s: [] for s in settings}
        for seed in range(min(seeds or self.preset.seeds, self.preset.seeds)):
            if self.cached_only:
                if not all(self._path(dataset, seed, s).is_file() for s in settings):
                    break  # the seeds stay consecutive, so that every table is paired
                pipe = None
            else:
                pipe = self.pipeline(dataset, seed)
            for setting in settings:
                table[setting].append(self.score(dataset, seed, setting, pipe))
        return table

    def run(self, datasets: tuple[str, ...]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "preset": dataclasses.asdict(self.preset),
            "model": self.model,
            "datasets": {},
        }
        chosen: dict[str, float] = {}
        for dataset in datasets:
            grid = self.scores(dataset, [Setting("cfg", w) for w in self.preset.scales])
            if not next(iter(grid.values())):  # --cached-only, and no seed has the whole grid yet
                logger.info("%s: no seed has the whole grid scored yet; left out of the report", dataset)
                continue
            accuracy = {s.scale: _mean(rows, "accuracy") for s, rows in grid.items()}
            w = benchmark_scale(accuracy)
            cfg = Setting("cfg", w)
            part: dict[str, Any] = {
                "seeds": len(grid[cfg]),
                "benchmark_scale": w,
                "grid": [_row(s, rows, grid[Setting("cfg", s.scale)]) for s, rows in grid.items()],
            }
            report["datasets"][dataset] = part
            seeds = part["seeds"]  # every table on the grid's seeds at most (fewer: --cached-only)
            if self.grid_only:
                continue
            if dataset == TUNE or not chosen:  # tune every method's strength here, once
                sweeps = {
                    method: self.scores(
                        dataset,
                        [Setting(method, w, s) for s in strengths],
                        _at_most(self.preset.tune_seeds, seeds),
                    )
                    for method, strengths in self.preset.strengths
                }
                if not all(next(iter(sweep.values())) for sweep in sweeps.values()):
                    continue  # --cached-only, and the sweeps are not all scored yet
                tuning = grid[cfg][: self.preset.tune_seeds]  # plain CFG on the same seeds
                cfg_mean = {m: _mean(tuning, m) for m in METRICS}
                for method, table in sweeps.items():
                    means = {s.strength: {m: _mean(rows, m) for m in METRICS} for s, rows in table.items()}
                    chosen[method] = choose_strength(means, cfg_mean)
                tuned_on = dataset
            methods = [Setting(m, w, chosen[m]) for m, _ in self.preset.strengths]
            table = self.scores(dataset, methods, seeds)
            combined = [
                Setting(name, w, parts=tuple((p, chosen[p]) for p in name.split("+")))
                for name in self.preset.combined
            ]
            if not next(iter(table.values())):  # --cached-only, and no seed has every method yet
                continue
            combined_rows = self.scores(dataset, combined, _at_most(self.preset.combined_seeds, seeds))
            table |= {s: rows for s, rows in combined_rows.items() if rows}  # none yet: --cached-only
            sweeps_rows = {}
            if dataset == tuned_on:
                sweeps_rows = {s: rows for sweep in sweeps.values() for s, rows in sweep.items()}
            part |= {
                "tuned_on": tuned_on,
                "methods": [_row(s, rows, grid[cfg]) for s, rows in {**sweeps_rows, **table}.items()],
                "chosen": dict(chosen),
                "targets": targets(grid[Setting("cfg", 1.0)], grid[cfg], table),
                "front": front_gaps({s.scale: rows for s, rows in grid.items()}, w, table),
            }
        report["machine"] = {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "CPU",
            "threads": torch.get_num_threads(),
        }
        return report


def targets(
    unguided: list[dict[str, float]],
    cfg: list[dict[str, float]],
    table: dict[Setting, list[dict[str, float]]],
) -> dict[str, Any]:
    """The issue's targets for every atom method: the share of the recall CFG lost (``w = 1`` → ``w*``)
    that it recovers at matched fidelity, and its paired recall difference to each peer, with the
    precision difference that says whether the two were matched (±0.01). A method scored on fewer seeds
    (the combined ones) is compared on its seeds only: the first ones, paired."""

    def lost_on(seeds: int) -> float:
        return _mean(unguided[:seeds], "recall") - _mean(cfg[:seeds], "recall")

    lost = lost_on(len(cfg))
    rows = {setting.method: rows for setting, rows in table.items()}
    result: dict[str, Any] = {"recall_lost": lost}
    for method in (m for m in rows if m.startswith("atom")):
        mine = rows[method]
        seeds = len(mine)
        means = {m: _mean(mine, m) for m in METRICS}
        plain = {m: _mean(cfg[:seeds], m) for m in METRICS}
        peers = {}
        for peer in (p for p in PEERS if p in rows):  # --methods may leave peers out
            theirs = rows[peer][:seeds]
            recall = paired_interval([a["recall"] - b["recall"] for a, b in zip(mine, theirs, strict=True)])
            peers[peer] = {
                "recall": recall,
                "precision_diff": means["precision"] - _mean(theirs, "precision"),
            }
        result[method] = {
            "recovered": (means["recall"] - plain["recall"]) / lost_on(seeds) if lost_on(seeds) > 0 else None,
            "matched": admissible(means, plain),
            "peers": peers,
        }
    return result


def front_gaps(
    grid: dict[float, list[dict[str, float]]], scale: float, table: dict[Setting, list[dict[str, float]]]
) -> dict[str, tuple[float, float | None, float | None]]:
    """Every method's recall above plain CFG's own front at the method's precision: paired per seed.

    Lowering ``w`` also trades precision for recall, so a method only adds something where it lies above
    the line CFG draws on its grid from ``w = 1`` to ``w*``. Per seed, CFG's recall at the method's
    precision is interpolated linearly along that seed's grid points that no other dominates (higher
    precision and recall: where precision falls with w, a larger w is no trade at all), held at the
    ends beyond them, and the method's recall minus it is averaged over seeds with a 95 % interval.
    """
    scales = [w for w in sorted(grid) if w <= scale]
    gaps = {}
    for setting, rows in table.items():
        differences = []
        for seed, row in enumerate(rows):
            points = _pareto([(grid[w][seed]["precision"], grid[w][seed]["recall"]) for w in scales])
            precisions, recalls = zip(*points, strict=True)
            differences.append(row["recall"] - float(np.interp(row["precision"], precisions, recalls)))
        gaps[setting.method] = paired_interval(differences)
    return gaps


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (precision, recall) points that no other point beats on both, by increasing precision."""
    front: list[tuple[float, float]] = []
    for precision, recall in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or recall > front[-1][1]:
            front.append((precision, recall))
    return front[::-1]


def _at_most(seeds: int | None, limit: int) -> int:
    """``seeds`` (``None``: all) but no more than ``limit``."""
    return min(seeds or limit, limit)


def _mean(rows: list[dict[str, float]], metric: str) -> float:
    return statistics.fmean(row[metric] for row in rows)


def _row(setting: Setting, rows: list[dict[str, float]], cfg_rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean, std and the paired difference to plain CFG (same seeds, same noise) of every metric."""
    row: dict[str, Any] = {"setting": setting.name, "method": setting.method, "scale": setting.scale}
    row["strength"] = setting.strength if not setting.parts else dict(setting.parts)
    for metric in METRICS:
        values = [r[metric] for r in rows]
        pairs = zip(rows, cfg_rows[: len(rows)], strict=True)  # a sweep's rows cover the tuning seeds only
        diff = paired_interval([a[metric] - b[metric] for a, b in pairs])
        row[metric] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "diff": diff[0],
            "low": diff[1],
            "high": diff[2],
        }
    return row


def _brief(scores: dict[str, float]) -> str:
    return ", ".join(f"{m} {scores[m]:.3f}" for m in METRICS)


# ------------------------------------------------------------------------------------------ the report
def markdown(report: dict[str, Any]) -> str:
    preset = report["preset"]
    lines = [
        "# Classifier-free guidance: diversity at matched precision (bench/cfg.py)",
        "",
        f"Models: configs/<dataset>-{report.get('model', 'cfg')}.yaml, {preset['seeds']} model seed(s); "
        f"{preset['samples_per_class']} samples per class per setting (10 classes), "
        f"{preset['inference_steps']} sampling steps (DDIM with η = {preset['eta']:g}; a rectified flow: Euler), "
        "the same noise for every setting of a seed. "
        "Per-class scores on the dataset classifier's features, averaged over classes; accuracy = the "
        "classifier agrees with the requested label. Δ = paired difference to plain CFG at the same w, "
        "[95 % t-interval over seeds]; an interval containing 0 is not a result.",
        "Machine: {platform}, {device}, {threads} threads, torch {torch}.".format(**report["machine"]),
    ]
    for dataset, part in report["datasets"].items():
        lines += ["", f"## {dataset}", ""]
        if part.get("seeds", preset["seeds"]) < preset["seeds"]:
            lines += [
                f"**Interim: {part['seeds']} of {preset['seeds']} model seeds scored so far** "
                "(`--cached-only`; the methods on the seeds that have all of them).",
                "",
            ]
        lines += ["### The CFG grid", ""]
        lines += _table(part["grid"], diffs=False)
        scale = f"Benchmark scale w* = {part['benchmark_scale']:g} (the largest w at which class accuracy still rises, by more than {ACCURACY_RISE:g})."
        if "methods" not in part:  # --grid-only
            lines += ["", scale]
            continue
        lines += [
            "",
            f"{scale} Strengths tuned on {part['tuned_on']}: "
            + ", ".join(f"{m} {s:g}" for m, s in part["chosen"].items())
            + ".",
            "",
            f"### Methods at w = {part['benchmark_scale']:g}",
            "",
        ]
        lines += _table(part["methods"], diffs=True)
        lines += ["", "### Targets", "", *_targets(part["targets"])]
        if "front" in part:
            lines += ["", "### Above CFG's own front?", "", *_front(part["front"], part["benchmark_scale"])]
    return "\n".join(lines) + "\n"


def _targets(targets: dict[str, Any]) -> list[str]:
    peers = [p for p in PEERS if any(p in row["peers"] for m, row in targets.items() if m != "recall_lost")]
    lines = [
        f"CFG lost {targets['recall_lost']:.3f} recall from w = 1 to w*. Recovered = the share of it that a "
        "method wins back over plain CFG (target ≥ 0.5 at matched fidelity). Δ recall to each peer: paired, "
        "[95 % interval]; the peer's precision gap in parentheses (matched when within ±0.01).",
        "",
        "| method | recovered | matched fidelity | " + " | ".join(f"Δ recall vs {p}" for p in peers) + " |",
        "|---" * (3 + len(peers)) + "|",
    ]
    for method, row in targets.items():
        if method == "recall_lost":
            continue
        cells = [
            f"{format_interval(*p['recall'])} ({p['precision_diff']:+.3f})" for p in row["peers"].values()
        ]
        lines.append(
            f"| {method} | {_number(row['recovered'], '.2f')} | {'yes' if row['matched'] else 'no'} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _front(gaps: dict[str, list], scale: float) -> list[str]:
    lines = [
        f"A smaller w also buys recall with precision. Recall above CFG's line through its grid points "
        f"w = 1 … {scale:g}, at the method's own precision (per seed, paired; [95 % interval]); an "
        "interval that contains 0 means the method did no better than choosing a smaller w.",
        "",
        "| method | Δ recall over CFG's front |",
        "|---|---|",
    ]
    lines += [f"| {method} | {format_interval(*gap)} |" for method, gap in gaps.items()]
    return lines


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _table(rows: list[dict[str, Any]], diffs: bool) -> list[str]:
    shown = ("fid", "precision", "recall", "coverage", "density", "vendi", "lpips", "accuracy")
    lines = ["| setting | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for row in rows:
        cells = []
        for metric in shown:
            value = row[metric]
            cell = f"{value['mean']:.3f} ± {value['std']:.3f}"
            if diffs and row["method"] != "cfg":
                cell += f"<br>Δ {format_interval(value['diff'], value['low'], value['high'])}"
            cells.append(cell)
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    return lines


def front_plot(report: dict[str, Any], path: Path) -> None:
    """Precision–recall per dataset: the CFG grid as a line, each method's settings as markers."""
    from matplotlib.figure import Figure

    from atomgen.io import write_atomic

    datasets = list(report["datasets"])
    if not datasets:  # --cached-only before any grid is complete
        return
    figure = Figure(figsize=(5.5 * len(datasets), 4.5))
    for index, dataset in enumerate(datasets):
        axes = figure.add_subplot(1, len(datasets), index + 1)
        grid = report["datasets"][dataset]["grid"]
        axes.plot(
            [r["precision"]["mean"] for r in grid], [r["recall"]["mean"] for r in grid], "k-o", label="CFG"
        )
        for row in grid:
            axes.annotate(
                f"w={row['scale']:g}", (row["precision"]["mean"], row["recall"]["mean"]), fontsize=7
            )
        every = report["datasets"][dataset].get("methods", [])  # none after --grid-only
        for method in sorted({r["method"] for r in every}):
            rows = [r for r in every if r["method"] == method]
            axes.plot(
                [r["precision"]["mean"] for r in rows], [r["recall"]["mean"] for r in rows], "x", label=method
            )
        axes.set(title=dataset, xlabel="precision (per class)", ylabel="recall (per class)")
        axes.legend(fontsize=7)
    figure.tight_layout()
    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=120))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumable)")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu"), help="sizes (default: cpu)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes: every code path in seconds")
    parser.add_argument("--seeds", type=int, help="model seeds (default: the preset's)")
    parser.add_argument(
        "--datasets", nargs="+", default=[TUNE, CONFIRM], help=f"default: {TUNE} (tune) then {CONFIRM}"
    )
    parser.add_argument("--eta", type=float, help="η of DDIM (default: the preset's, 1: ancestral)")
    parser.add_argument(
        "--model",
        default="cfg",
        help="the models: configs/<dataset>-<model>.yaml (default: cfg, the UNet DDPMs; flow-dit: the "
        "class-conditional DiT rectified flows); reports other than cfg are named cfg-<model>.*",
    )
    parser.add_argument("--scales", type=float, nargs="+", help="the CFG grid (default: the preset's)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[m for m, _ in Preset.strengths] + list(Preset.combined),
        help="only these methods (default: all); a combined one needs its parts",
    )
    parser.add_argument("--grid-only", action="store_true", help="stop after the CFG grid (no methods)")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="an interim report from the scores written so far (never trains or samples)",
    )
    parser.add_argument("--results", type=Path, help="also write the tables and the plot here (results/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    preset = Preset.named("dry-run" if args.dry_run else args.preset)
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=args.seeds)
    if args.eta is not None:
        preset = dataclasses.replace(preset, eta=args.eta)
    if args.scales:
        preset = dataclasses.replace(preset, scales=tuple(sorted(args.scales)))
    if args.methods:
        preset = preset.only(args.methods)
    bench = Bench(
        args.out,
        preset,
        progress=not args.dry_run,
        grid_only=args.grid_only,
        model=args.model,
        cached_only=args.cached_only,
    )
    report = bench.run(tuple(args.datasets))
    from atomgen.io import write_json, write_text

    stem = "cfg" if args.model == "cfg" else f"cfg-{args.model}"
    for folder in filter(None, (args.out, args.results)):
        write_json(folder / f"{stem}.json", report)
        write_text(folder / f"{stem}.md", markdown(report))
        front_plot(report, folder / f"{stem}-front.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
