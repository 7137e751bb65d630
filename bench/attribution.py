"""Per-component attribution: the learned importances against the standard saliency baselines (issue 14).

    python bench/attribution.py --out runs/attribution                   # the CPU preset, staged, resumable
    python bench/attribution.py --out runs/attribution --datasets mnist5k --seeds 1   # one stage of it
    python bench/attribution.py --out /tmp/attribution --dry-run         # every code path, under a minute
    python bench/attribution.py --out runs/attribution-gpu --preset gpu  # bench/gpu.sh --attribution

Stages, each resumable (a finished model or measurement is never redone):

1. **Models**: one unconditional DDPM with atom separation per dataset and seed:
   ``configs/<dataset>-ddpm.yaml`` with ``separation.method=atom`` and the library's separation defaults
   (weight, site, options), resized by the preset, trained by :func:`atomgen.train.train` into
   ``<out>/<dataset>/seed<k>/model`` (resumed from its latest checkpoint when one exists).
2. **Measurement**, on held-out real images: each batch is noised at every ``τ`` of the preset
   (``t = round(τ (T − 1))``), passed through the UNet once with the separation site captured, and the
   trained separation module's learned importances ``s`` are scored against the feature norm, gradient ×
   activation and integrated gradients (and random orders) by :func:`atomgen.eval.compare_attributions`:
   deletion and insertion curves of the atom distance, and their areas (method.md §9), twice: on the
   module's own distance, whose particles the learned importances weight (``weighting="learned"``, the
   issue's measure), and on the distance with every particle weighted 1 (``"uniform"``), which the role
   head cannot shape, so a ranking that wins there finds what sets samples apart in the features
   themselves. Also the role head's
   diagnostics (issue 14, item 3): the spread of ``s`` across a sample's particles, the entropy of the
   roles, the mean ``|q|``. Written to ``<out>/<dataset>/seed<k>/attribution.json`` (and ``maps.npz``,
   every method's particle scores for the figure).
3. **Samples**: ``samples`` images of each model by DDIM (``sample_steps`` steps, deterministic), from the
   same noise for every seed and every variant (``--set``), scored against held-out images on the dataset
   classifier's features (:func:`atomgen.eval.run_eval`: FID, precision, recall, density, coverage,
   Vendi, modes): what a separation variant that sharpens the importances costs, or gains, in samples.
   Written to ``<out>/<dataset>/seed<k>/samples.json``.
4. **Report**: ``<out>/attribution.{json,md,png}``: per dataset and method, deletion and insertion AUC
   mean ± std over seeds and their gains over random; the paired difference learned − baseline with a
   95 % t-interval over seeds; the issue's targets evaluated (:func:`targets`); the diagnostics; pixel-space
   maps of every method. With ``--versus OTHER`` (the run directory of another variant, e.g. without
   ``--set``), also the paired differences this − other, seed by seed (same data, same noise), of the
   learned importances' gains, the role entropy and the sample scores (:func:`versus`).

**Held-out images.** Every model trains on a fixed subset of its dataset (``data.limit``, the subset
:func:`atomgen.data.load_dataset` draws); the held-out images are those of the whole dataset whose pixels
appear nowhere in that subset (:func:`held_out`), so a duplicate of a training image is never measured.
mnist5k has only 5,000 images, so its models train on 4,500 (one tenth fewer than
``configs/mnist5k-ddpm.yaml``); the images are the same for every seed, so seeds differ only in the model.

The class-conditional models of the CFG benchmark are not measured: they train without a separation
module, so they have no learned importances.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import format_interval, machine, paired_interval, paragraph, spread
from runner import chosen_preset, parse_arguments, write_reports
from training import dataset_overrides, held_out, held_out_source, sample_scores, scored, train_once

logger = logging.getLogger("bench.attribution")

DATASETS = ("mnist5k", "fashion-mnist")
LEARNED = "importance"
BASELINES = ("feature_norm", "gradient_x_activation", "integrated_gradients")
METHODS = (LEARNED, *BASELINES)
TARGET_BASELINES = ("gradient_x_activation", "feature_norm")  # what the learned importances must beat
CURVES = ("deletion", "insertion")
WEIGHTINGS = ("learned", "uniform")  # atomgen.eval's: the distance the curves measure
CURVES_OF = {"learned": "curves", "uniform": "uniform_curves"}  # a measurement row's key per weighting
SUMMARY_OF = {"learned": "summary", "uniform": "uniform"}  # a seed measurement's summary per weighting
LABELS = {
    LEARNED: "learned importance s",
    "feature_norm": "feature norm",
    "gradient_x_activation": "gradient × activation",
    "integrated_gradients": "integrated gradients",
    "random": "random orders",
}


# The recipe of configs/mnist5k-ddpm.yaml (16×16, about 0.3 s/step on 2 CPU cores); the Fashion-MNIST
# config is a GPU preset (32×32, attention, 50,000 steps), too slow for the CPU.
_CPU_RECIPE = (
    "data.resolution=16",
    "model.block_out_channels=[32,64,64]",
    "model.layers_per_block=1",
    "model.norm_num_groups=8",
    "model.attention=false",
    "train.steps=3000",
    "train.batch_size=128",
    "train.learning_rate=2.0e-3",
    "train.lr_warmup_steps=100",
    "train.mixed_precision='no'",  # quoted: YAML reads a bare no as false
    "train.checkpoint_every=500",
)
_TOY = (  # dry run: a two-level toy UNet on 64 training images, 4 steps
    "data.limit=64",
    "data.resolution=16",
    "model.block_out_channels=[8,16]",
    "model.layers_per_block=1",
    "model.norm_num_groups=4",
    "model.attention=false",
    "train.steps=4",
    "train.batch_size=16",
    "train.mixed_precision='no'",  # quoted: YAML reads a bare no as false
    "train.checkpoint_every=4",
    "train.log_every=1",
)


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark run.

    Attributes:
        seeds: model seeds per dataset.
        overrides: per dataset, config overrides on top of ``configs/<dataset>-ddpm.yaml`` (each must
            set ``data.limit``: the images outside the training subset are the held-out ones).
        images: atoms per batch. The curves mask every atom of a batch at once and measure its distance
            to the others, so this is also the number of atoms each distance is averaged over.
        batches: held-out batches per noise level (``images · batches`` distinct held-out images).
        taus: noise levels, as fractions of the training schedule.
        steps: integration steps of integrated gradients.
        num_random: random orders averaged for the reference curves.
        map_images: images in the figure.
        reference_images: held-out images the samples are scored against (mnist5k holds out 500).
        samples: DDIM samples per model.
        sample_steps: DDIM steps.
        sample_batch: images per sampling call (it fixes how the noise is drawn, so keep it to compare).
    """

    seeds: int = 3
    overrides: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("mnist5k", ("data.limit=4500",)),
        ("fashion-mnist", ("data.limit=10000", *_CPU_RECIPE)),
    )
    images: int = 64
    batches: int = 4
    taus: tuple[float, ...] = (0.3, 0.6)
    steps: int = 32
    num_random: int = 8
    map_images: int = 6
    reference_images: int = 500
    samples: int = 1000
    sample_steps: int = 25
    sample_batch: int = 250

    @classmethod
    def named(cls, name: str) -> Preset:
        if name == "cpu":
            return cls()
        if name == "gpu":  # the configs' own recipes (Fashion-MNIST at 32×32 with attention), more of it
            return cls(
                seeds=5,
                overrides=(
                    ("mnist5k", ("data.limit=4500",)),
                    ("fashion-mnist", ("data.limit=50000", "train.steps=10000")),
                ),
                images=96,  # 96 × 5 = 480 of mnist5k's 500 held-out images
                batches=5,
                steps=64,
                num_random=16,
                samples=2000,
                sample_steps=50,
                sample_batch=500,
            )
        if name == "dry-run":
            return cls(
                seeds=2,
                overrides=tuple((dataset, _TOY) for dataset in DATASETS),
                images=8,
                batches=2,
                steps=4,
                num_random=2,
                map_images=4,
                reference_images=24,
                samples=24,
                sample_steps=4,
                sample_batch=12,
            )
        raise ValueError(f"unknown preset {name!r}; known: cpu, gpu, dry-run")

    def overrides_of(self, dataset: str) -> tuple[str, ...]:
        return dataset_overrides(self.overrides, dataset)

    def measurement(self) -> dict[str, Any]:
        """What a stored measurement depends on: a different value means it is redone."""
        fields = ("images", "batches", "taus", "steps", "num_random", "map_images")
        settings = {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in fields}
        return settings | {"weightings": list(WEIGHTINGS), "diagnostics": list(DIAGNOSTICS)}

    def sampling(self) -> dict[str, int]:
        """What stored sample scores depend on besides the model."""
        fields = ("reference_images", "samples", "sample_steps", "sample_batch")
        return {name: getattr(self, name) for name in fields}


# ------------------------------------------------------------------------------------------ pure helpers
def role_diagnostics(importance: torch.Tensor, roles: torch.Tensor, charge: torch.Tensor) -> dict[str, float]:
    """Whether the role head separates particles (issue 14, item 3), from ``AtomOutput``'s tensors.

    Returns:
        importance_spread: the standard deviation of ``s`` across a sample's particles, averaged over
            samples (0: every particle of a sample equally important, so no ranking to speak of).
        sample_spread: the standard deviation of ``s`` across the samples at each particle index,
            averaged over indices (0: the same map for every sample, a fixed mask of positions rather
            than an attribution of the sample).
        role_entropy: the mean entropy of the roles ``(B, n, 3)`` in nats (``ln 3 ≈ 1.099``: uniform).
        role_entropy_fraction: the same as a share of ``ln 3`` (1: uniform roles, 0: one-hot).
        mean_abs_charge: the mean ``|q|`` (0 everywhere: the signed mode's trivial solution).
        mean_importance: the mean ``s``.
    """
    roles = roles.detach().double()
    entropy = -(roles * roles.clamp_min(1e-12).log()).sum(-1)
    return {
        "importance_spread": float(importance.detach().double().std(dim=1, correction=0).mean()),
        "sample_spread": float(importance.detach().double().std(dim=0, correction=0).mean()),
        "role_entropy": float(entropy.mean()),
        "role_entropy_fraction": float(entropy.mean() / math.log(3)),
        "mean_abs_charge": float(charge.detach().double().abs().mean()),
        "mean_importance": float(importance.detach().double().mean()),
    }


SAMPLE_METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "modes_covered")
DIAGNOSTICS = (
    "importance_spread",
    "sample_spread",
    "role_entropy",
    "role_entropy_fraction",
    "mean_abs_charge",
    "mean_importance",
)


def targets(paired: dict[str, dict[str, dict[str, dict[str, float | None]]]]) -> dict[str, Any]:
    """The issue's target: on both datasets, the learned importances' deletion and insertion gains
    exceed those of gradient × activation and of the feature norm, the paired 95 % interval over seeds
    excluding zero (its lower end above 0).

    Args:
        paired: ``dataset → baseline → curve → {"mean", "low", "high"}``, the paired differences
            learned − baseline; a dataset that was not measured is missing, which misses the target.

    Returns:
        ``checks`` (one row per dataset, baseline and curve, with ``met``), ``met`` (all of them),
        ``missing`` (the datasets not measured).
    """
    checks = []
    for dataset in DATASETS:
        for baseline in TARGET_BASELINES:
            for curve in CURVES:
                interval = paired.get(dataset, {}).get(baseline, {}).get(curve)
                low = None if interval is None else interval["low"]
                checks.append(
                    {
                        "dataset": dataset,
                        "baseline": baseline,
                        "curve": curve,
                        "interval": interval,
                        "met": bool(low is not None and low > 0),
                    }
                )
    missing = [d for d in DATASETS if d not in paired]
    return {"checks": checks, "met": all(c["met"] for c in checks), "missing": missing}


def seed_numbers(measurement: dict[str, Any], samples: dict[str, Any]) -> dict[str, float]:
    """What ``--versus`` compares for one seed: the learned importances' gains under both weightings,
    the role entropy (as a share of ln 3) and the sample scores."""
    numbers = {
        f"{curve} gain ({weighting})": measurement[SUMMARY_OF[weighting]][LEARNED][f"{curve}_gain"]
        for weighting in WEIGHTINGS
        for curve in CURVES
    }
    numbers["role entropy / ln 3"] = measurement["summary"]["diagnostics"]["role_entropy_fraction"]
    return numbers | {
        f"samples: {k}": samples["scores"][k] for k in ("fid", "precision", "recall", "coverage")
    }


def versus(this: list[dict[str, float]], other: list[dict[str, float]]) -> dict[str, Any]:
    """Paired differences ``this − other`` over the seeds both variants measured (lists of
    :func:`seed_numbers`, seed by seed), with both sides' mean ± std."""
    count = min(len(this), len(other))
    rows = {}
    for key in this[0]:
        mine, theirs = [s[key] for s in this[:count]], [s[key] for s in other[:count]]
        mean, low, high = paired_interval([a - b for a, b in zip(mine, theirs, strict=True)])
        rows[key] = {
            "this": spread(mine),
            "other": spread(theirs),
            "difference": {"mean": mean, "low": low, "high": high},
        }
    return {"seeds": count, "rows": rows}


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``(B, n)`` scores min–max scaled to [0, 1] (a constant row becomes 0): the maps of
    methods with different units side by side. The curves depend on the order only."""
    low, high = scores.min(1, keepdim=True).values, scores.max(1, keepdim=True).values
    return torch.where(high > low, (scores - low) / (high - low).clamp_min(1e-12), 0.0)


# ------------------------------------------------------------------------------------------ the runs
class Bench:
    """The stages above, writing ``<out>/<dataset>/seed<k>/{model,attribution.json,maps.npz}``."""

    def __init__(self, out: Path, preset: Preset, progress: bool = True):
        self.out, self.preset, self.progress = out, preset, progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._held_out: dict[str, torch.Tensor] = {}
        self._reference: dict[str, Any] = {}

    def folder(self, dataset: str, seed: int) -> Path:
        return self.out / dataset / f"seed{seed}"

    def config(self, dataset: str, seed: int):
        from atomgen.train.config import ExperimentConfig

        overrides = [
            "separation.method=atom",
            *self.preset.overrides_of(dataset),
            f"train.seed={seed}",
            f"train.output_dir={self.folder(dataset, seed) / 'model'}",
        ]
        return ExperimentConfig.from_yaml(Path(f"configs/{dataset}-ddpm.yaml"), overrides)

    def pipeline(self, dataset: str, seed: int):
        """The trained pipeline of one seed, trained (or resumed) first when its export is missing."""
        from atomgen.pipelines import AtomDDPMPipeline

        folder = train_once(self.config(dataset, seed), "pipeline", progress=self.progress)
        pipe = AtomDDPMPipeline.from_pretrained(folder).to(self.device)
        if pipe.separation is None:
            raise SystemExit(f"{folder} has no separation module; was it trained with atom separation?")
        return pipe

    def images(self, dataset: str) -> torch.Tensor:
        if dataset not in self._held_out:
            data = self.config(dataset, 0).data
            self._held_out[dataset] = held_out(data, self.preset.images * self.preset.batches)
        return self._held_out[dataset]

    def measure(self, dataset: str, seed: int) -> dict[str, Any]:
        """The measurement of one seed (stage 2), read back when it exists with the same settings."""
        from atomgen.io import write_json

        path = self.folder(dataset, seed) / "attribution.json"
        settings = self.preset.measurement()
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored["settings"] == settings:
                return stored
            logger.info("%s: measured with other settings; measuring again", path)
        pipe = self.pipeline(dataset, seed)
        started = time.perf_counter()
        measurement = measure(
            pipe, self.images(dataset), self.preset, self.folder(dataset, seed) / "maps.npz"
        )
        measurement |= {"settings": settings, "seconds": time.perf_counter() - started}
        write_json(path, measurement)
        summary = measurement["summary"]
        logger.info(
            "%s seed %d: deletion gain %s; insertion gain %s",
            dataset,
            seed,
            ", ".join(f"{m} {summary[m]['deletion_gain']:+.3f}" for m in METHODS),
            ", ".join(f"{m} {summary[m]['insertion_gain']:+.3f}" for m in METHODS),
        )
        return measurement

    def sample_quality(self, dataset: str, seed: int) -> dict[str, Any]:
        """Stage 3 for one seed, read back when it exists with the same settings."""
        from atomgen.eval import TensorSource
        from atomgen.io import write_json
        from atomgen.pipelines import AtomDDIMPipeline

        path, settings = self.folder(dataset, seed) / "samples.json", self.preset.sampling()
        if path.is_file() and (stored := json.loads(path.read_text()))["settings"] == settings:
            return stored
        folder = train_once(self.config(dataset, seed), "pipeline", progress=self.progress)
        pipe = AtomDDIMPipeline.from_pretrained(folder).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if dataset not in self._reference:
            self._reference[dataset] = held_out_source(
                self.config(dataset, 0).data, self.preset.reference_images
            )
        started = time.perf_counter()
        chunks = []
        for index, first in enumerate(range(0, self.preset.samples, self.preset.sample_batch)):
            generator = torch.Generator().manual_seed(index)  # the same noise for every seed and variant
            images = pipe(
                batch_size=min(self.preset.sample_batch, self.preset.samples - first),
                generator=generator,
                num_inference_steps=self.preset.sample_steps,
                output_type="pt",
            ).images
            chunks.append((images.cpu() * 255).round() / 255)  # 8 bits, as saved images would be
        result = scored(
            self._reference[dataset],
            TensorSource(torch.cat(chunks)),
            sample_scores,
            batch_size=self.preset.sample_batch,
            device=self.device,
            cache_dir=self.out / "cache",  # the held-out images' features, once per dataset
        )
        stored = {"settings": settings, **result, "seconds": time.perf_counter() - started}
        write_json(path, stored)
        logger.info(
            "%s seed %d samples: %s",
            dataset,
            seed,
            ", ".join(f"{k} {v:.3f}" for k, v in stored["scores"].items()),
        )
        return stored

    def stored(self, dataset: str) -> list[dict[str, float]]:
        """:func:`seed_numbers` of the seeds 0, 1, … whose measurement and samples are stored with this
        preset's settings, up to the first that is not (what another variant's run is read for)."""
        numbers = []
        for seed in range(self.preset.seeds):
            folder = self.folder(dataset, seed)
            files = [folder / "attribution.json", folder / "samples.json"]
            if not all(f.is_file() for f in files):
                break
            measurement, samples = (json.loads(f.read_text()) for f in files)
            if (measurement["settings"], samples["settings"]) != (
                self.preset.measurement(),
                self.preset.sampling(),
            ):
                break
            numbers.append(seed_numbers(measurement, samples))
        return numbers

    def run(self, datasets: tuple[str, ...], other: Path | None = None) -> dict[str, Any]:
        report: dict[str, Any] = {
            "preset": dataclasses.asdict(self.preset),
            "split": paragraph(__doc__, "Held-out images."),
            "datasets": {},
        }
        for dataset in datasets:
            seeds = [self.measure(dataset, seed) for seed in range(self.preset.seeds)]
            report["datasets"][dataset] = summarize(seeds)
            samples = [self.sample_quality(dataset, seed) for seed in range(self.preset.seeds)]
            report["datasets"][dataset]["samples"] = {
                "scores": {k: spread([s["scores"][k] for s in samples]) for k in SAMPLE_METRICS},
                "per_seed": [s["scores"] for s in samples],
                "extractor": samples[0]["extractor"],
            }
            train_file = [self.folder(dataset, s) / "train.json" for s in range(self.preset.seeds)]
            report["datasets"][dataset]["train_seconds"] = [
                json.loads(f.read_text())["seconds"] if f.is_file() else None for f in train_file
            ]
            report["datasets"][dataset]["site"] = seeds[0]["site"]
            if other is not None:
                theirs = Bench(other, self.preset).stored(dataset)
                if not theirs:
                    logger.warning(
                        "%s: no %s seed measured with these settings; no comparison", other, dataset
                    )
                    continue
                mine = [seed_numbers(m, s) for m, s in zip(seeds, samples, strict=True)]
                report["datasets"][dataset]["versus"] = versus(mine, theirs)
        paired = {d: part["paired"] for d, part in report["datasets"].items()}
        report["targets"] = targets(paired)
        report["machine"] = machine(self.device)
        return report


@torch.no_grad()
def measure(pipe: Any, images: torch.Tensor, preset: Preset, maps_path: Path) -> dict[str, Any]:
    """Stage 2 for one trained pipeline: every noise level and batch, then the mean per method."""
    from atomgen import attach
    from atomgen.eval import compare_attributions, particle_attributions
    from atomgen.io import write_atomic

    separation = pipe.separation.eval()
    site, unet, scheduler = pipe.config.separation_site, pipe.unet.eval(), pipe.scheduler
    steps = scheduler.config.num_train_timesteps
    rows = []
    for tau_index, tau in enumerate(preset.taus):
        t = round(tau * (steps - 1))
        for batch, clean in enumerate(images.split(preset.images)):
            # The same noise for every model seed: the seeds differ only in the model.
            generator = torch.Generator().manual_seed(1_000 * tau_index + batch)
            noise = torch.randn(clean.shape, generator=generator)
            timestep = torch.full((len(clean),), t, dtype=torch.long)
            noisy = scheduler.add_noise(clean, noise, timestep).to(pipe.device)
            with attach(unet, site, None) as handle:
                unet(noisy, timestep.to(pipe.device))
            features = handle.features.float()
            output = separation(features)
            row: dict[str, Any] = {"tau": tau, "timestep": t, "batch": batch}
            for weighting in WEIGHTINGS:
                results = compare_attributions(
                    separation,
                    features,
                    methods=METHODS,
                    num_random=preset.num_random,
                    seed=batch,
                    steps=preset.steps,
                    weighting=weighting,
                )
                row[CURVES_OF[weighting]] = {m: r.to_dict() for m, r in results.items()}
            row["diagnostics"] = role_diagnostics(output.importance, output.roles, output.charge)
            rows.append(row)
            if tau_index == 0 and batch == 0:  # the figure: every method's scores on the first images
                shown = preset.map_images
                scores = {
                    m: particle_attributions(separation, features, m, steps=preset.steps)[:shown]
                    .cpu()
                    .numpy()
                    for m in METHODS
                }
                grid = np.asarray(output.grid)
                picture = {"images": ((clean[:shown] + 1) / 2).clamp(0, 1).numpy(), "grid": grid, **scores}
                write_atomic(maps_path, lambda file, p=picture: np.savez(file, **p))
    return {
        "site": site,
        "reference": rows[0]["curves"][LEARNED]["reference"],
        "rows": rows,
        **{key: _seed_summary(rows, weighting) for weighting, key in SUMMARY_OF.items()},
        "by_tau": {f"{tau:g}": _seed_summary([r for r in rows if r["tau"] == tau]) for tau in preset.taus},
    }


def _seed_summary(rows: list[dict[str, Any]], weighting: str = "learned") -> dict[str, Any]:
    """Means over noise levels and batches: each method's areas and gains, random's areas, diagnostics."""

    def mean(key: str, method: str) -> float:
        return statistics.fmean(r[CURVES_OF[weighting]][method][key] for r in rows)

    summary: dict[str, Any] = {
        m: {
            "deletion_auc": mean("auc_importance", m),
            "insertion_auc": mean("insertion_auc_importance", m),
            "deletion_gain": mean("gain", m),
            "insertion_gain": mean("insertion_gain", m),
        }
        for m in METHODS
    }
    summary["random"] = {
        "deletion_auc": mean("auc_random", LEARNED),
        "insertion_auc": mean("insertion_auc_random", LEARNED),
    }
    summary["diagnostics"] = {k: statistics.fmean(r["diagnostics"][k] for r in rows) for k in DIAGNOSTICS}
    return summary


def compare(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed summaries of one weighting: every method's areas and gains as mean ± std over seeds, the
    paired differences learned − baseline of the gains (equal to those of the areas: both share the
    random orders) with 95 % intervals, and the best method on each curve."""
    methods = {
        m: {key: spread([s[m][key] for s in summaries]) for key in summaries[0][m]}
        for m in (*METHODS, "random")
    }
    paired = {}
    for baseline in BASELINES:
        paired[baseline] = {}
        for curve in CURVES:
            key = f"{curve}_gain"
            mean, low, high = paired_interval([s[LEARNED][key] - s[baseline][key] for s in summaries])
            paired[baseline][curve] = {"mean": mean, "low": low, "high": high}
    best = {c: max(METHODS, key=lambda m: methods[m][f"{c}_gain"]["mean"]) for c in CURVES}
    return {"methods": methods, "paired": paired, "best": best}


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A dataset's seeds: :func:`compare` under the learned weighting (top level: the issue's measure)
    and under the uniform one (``"uniform"``), the gains by noise level and the diagnostics."""
    by_tau = {
        tau: {
            m: {f"{c}_gain": spread([s["by_tau"][tau][m][f"{c}_gain"] for s in seeds]) for c in CURVES}
            for m in METHODS
        }
        for tau in seeds[0]["by_tau"]
    }
    summaries = [s["summary"] for s in seeds]
    diagnostics = {k: spread([s["diagnostics"][k] for s in summaries]) for k in DIAGNOSTICS}
    return {
        "seeds": len(seeds),
        "reference": seeds[0]["reference"],
        **compare(summaries),
        "uniform": compare([s["uniform"] for s in seeds]),
        "by_tau": by_tau,
        "diagnostics": diagnostics,
        "measure_seconds": [s["seconds"] for s in seeds],
    }


# ------------------------------------------------------------------------------------------ the report
def markdown(report: dict[str, Any]) -> str:
    preset = report["preset"]
    taus = ", ".join(f"{t:g}" for t in preset["taus"])
    lines = [
        "# Attribution faithfulness at the separation site (bench/attribution.py)",
        "",
        f"{preset['seeds']} model seeds per dataset: unconditional DDPMs trained with atom separation "
        "(configs/<dataset>-ddpm.yaml, separation.method=atom, the library's separation defaults). "
        f"Held-out real images, {preset['batches']} batches of {preset['images']} per noise level τ ∈ {{{taus}}}, "
        "one UNet forward each; the particles are the separation module's (after pooling). Particles are "
        "ranked by each method and deleted (inserted) by rank: deletion = relative drop of the atom distance "
        "d̄, insertion = its recovery from the fully masked batch (method.md §9); a deleted or not yet "
        f"inserted particle is replaced by the atom's {_reference(report)}. AUC: area under the curve "
        f"(higher = more faithful); gain = AUC − the mean AUC of {preset['num_random']} random orders on the "
        f"same batch. Integrated gradients: {preset['steps']} steps. Mean ± std over seeds of the per-seed "
        "means over τ and batches; Δ = paired difference learned − baseline of the gains, "
        "[95 % t-interval over seeds]; an interval containing 0 is not a result.",
        "",
        f"Held-out images: {report['split']}",
        "",
        "Machine: {platform}, {device}, {threads} threads, torch {torch}.".format(**report["machine"]),
        *(
            ["", "Every model also with: " + ", ".join(f"`{o}`" for o in report["set"]) + "."]
            if report.get("set")
            else []
        ),
    ]
    for dataset, part in report["datasets"].items():
        lines += ["", f"## {dataset}", "", f"Site `{part['site']}`.", "", *_comparison(part)]
        if "uniform" in part:
            lines += [
                "",
                "The same curves on the distance with every particle weighted 1 (uniform weighting: the role "
                "head cannot shape it; the gradient methods attribute this distance):",
                "",
                *_comparison(part["uniform"]),
            ]
        lines += [
            "",
            "By noise level (gains, mean ± std over seeds):",
            "",
            "| τ | " + " | ".join(f"{LABELS[m]} del. / ins." for m in METHODS) + " |",
            "|---" * (len(METHODS) + 1) + "|",
        ]
        for tau, methods in part["by_tau"].items():
            cells = [
                f"{_cell(methods[m]['deletion_gain'])} / {_cell(methods[m]['insertion_gain'])}"
                for m in METHODS
            ]
            lines.append(f"| {tau} | " + " | ".join(cells) + " |")
        diagnostics = part["diagnostics"]
        lines += [
            "",
            "Role head (issue 14, item 3): s spread = std of s across a sample's particles (averaged); "
            "across samples = std of s across the samples at each particle index (averaged; 0 = the same "
            "map for every sample); role entropy in nats and as a share of ln 3 (1 = uniform roles).",
            "",
            "| s spread | across samples | role entropy | entropy / ln 3 | mean abs(q) | mean s |",
            "|---|---|---|---|---|---|",
            "| " + " | ".join(_cell(diagnostics[k], ".4f") for k in DIAGNOSTICS) + " |",
        ]
        if "samples" in part:
            scores = part["samples"]["scores"]
            lines += [
                "",
                f"Samples of these models ({preset['samples']} each, DDIM {preset['sample_steps']} steps, the "
                f"same noise for every seed and variant) against {preset['reference_images']} held-out "
                f"images, {part['samples']['extractor']} features:",
                "",
                "| " + " | ".join(SAMPLE_METRICS) + " |",
                "|---" * len(SAMPLE_METRICS) + "|",
                "| " + " | ".join(_cell(scores[k]) for k in SAMPLE_METRICS) + " |",
            ]
    if report.get("versus"):
        lines += ["", f"## Against `{report['versus']['out']}`", "", _versus_what(report)]
        for dataset, part in report["datasets"].items():
            if "versus" in part:
                lines += [
                    "",
                    f"{dataset}, {part['versus']['seeds']} paired seeds:",
                    "",
                    *_versus(part["versus"]),
                ]
    lines += ["", "## Targets", "", *_targets(report["targets"])]
    return "\n".join(lines) + "\n"


def _comparison(part: dict[str, Any]) -> list[str]:
    """The tables of one weighting's :func:`compare`: areas and gains per method, then the paired
    differences, then the best method per curve."""
    lines = [
        "| method | deletion AUC | deletion gain | insertion AUC | insertion gain |",
        "|---|---|---|---|---|",
    ]
    for method in (*METHODS, "random"):
        row = part["methods"][method]
        gains = [_cell(row[f"{c}_gain"]) if method != "random" else "—" for c in CURVES]
        lines.append(
            f"| {LABELS[method]} | {_cell(row['deletion_auc'])} | {gains[0]} | "
            f"{_cell(row['insertion_auc'])} | {gains[1]} |"
        )
    lines += ["", "| learned − baseline | Δ deletion gain | Δ insertion gain |", "|---|---|---|"]
    for baseline, row in part["paired"].items():
        cells = [format_interval(row[c]["mean"], row[c]["low"], row[c]["high"]) for c in CURVES]
        lines.append(f"| vs {LABELS[baseline]} | {cells[0]} | {cells[1]} |")
    best = part["best"]
    return [
        *lines,
        "",
        f"Best mean gain: deletion {LABELS[best['deletion']]}, insertion {LABELS[best['insertion']]}.",
    ]


def _versus_what(report: dict[str, Any]) -> str:
    def overrides(values: list[str] | None) -> str:
        if values is None:
            return "not recorded"
        return ", ".join(f"`{v}`" for v in values) or "none, the library defaults"

    what = report["versus"]
    compared = [d for d, part in report["datasets"].items() if "versus" in part]
    return (
        f"This run (overrides: {overrides(report.get('set'))}) against the variant in `{what['out']}` "
        f"(overrides: {overrides(what['set'])}): the same data, held-out images and noise seed by seed; "
        "Δ = this − other, [95 % t-interval over seeds]."
        + ("" if compared else " It has no seed measured with this preset's settings: nothing to compare.")
    )


def _versus(part: dict[str, Any]) -> list[str]:
    lines = ["| quantity | this | other | Δ |", "|---|---|---|---|"]
    for key, row in part["rows"].items():
        difference = row["difference"]
        lines.append(
            f"| {key} | {_cell(row['this'])} | {_cell(row['other'])} | "
            f"{format_interval(difference['mean'], difference['low'], difference['high'])} |"
        )
    return lines


def _reference(report: dict[str, Any]) -> str:
    references = {part["reference"] for part in report["datasets"].values()}
    return " / ".join(sorted(references)) or "mean particle"


def _cell(value: dict[str, Any], spec: str = ".3f") -> str:
    return f"{value['mean']:{spec}} ± {value['std']:{spec}}"


def _targets(result: dict[str, Any]) -> list[str]:
    lines = [
        "Learned importances have a larger deletion gain and a larger insertion gain than gradient × "
        "activation and the feature norm, on both datasets, the paired interval excluding zero.",
        "",
        "| dataset | baseline | curve | Δ gain [95 % interval] | |",
        "|---|---|---|---|---|",
    ]
    for check in result["checks"]:
        interval = check["interval"]
        cell = (
            "not measured"
            if interval is None
            else format_interval(interval["mean"], interval["low"], interval["high"])
        )
        mark = "met" if check["met"] else "missed"
        lines.append(
            f"| {check['dataset']} | {LABELS[check['baseline']]} | {check['curve']} | {cell} | {mark} |"
        )
    verdict = "**met**" if result["met"] else "**missed**"
    missing = f" (not measured: {', '.join(result['missing'])})" if result["missing"] else ""
    return [*lines, "", f"Target {verdict}{missing}."]


def figure(out: Path, report: dict[str, Any], path: Path) -> None:
    """Pixel-space maps of the first seed of every dataset at the first noise level: the held-out images,
    then one row per method, each map min–max scaled per image and upsampled bilinearly from the particle
    grid. Random orders have no map worth drawing."""
    from matplotlib.figure import Figure

    from atomgen.eval import attribution_maps
    from atomgen.io import write_atomic

    datasets, tau = list(report["datasets"]), report["preset"]["taus"][0]
    pictures = {}
    for dataset in datasets:
        with np.load(out / dataset / "seed0" / "maps.npz") as file:
            pictures[dataset] = {key: file[key] for key in file.files}
    columns = max(len(p["images"]) for p in pictures.values())
    rows = len(datasets) * (1 + len(METHODS))
    fig = Figure(figsize=(1.3 * columns + 1.6, 1.3 * rows))
    for block, dataset in enumerate(datasets):
        picture = pictures[dataset]
        images = torch.from_numpy(picture["images"])
        size, grid = tuple(images.shape[-2:]), tuple(int(g) for g in picture["grid"])
        maps = {m: attribution_maps(normalized(torch.from_numpy(picture[m])), grid, size) for m in METHODS}
        for row, name in enumerate(("image", *METHODS)):
            for column in range(len(images)):
                axes = fig.add_subplot(
                    rows, columns, (block * (1 + len(METHODS)) + row) * columns + column + 1
                )
                axes.imshow(images[column].mean(0), cmap="gray", vmin=0, vmax=1)
                if name != "image":
                    axes.imshow(maps[name][column, 0], cmap="hot", vmin=0, vmax=1, alpha=0.6)
                axes.set_xticks([])
                axes.set_yticks([])
                if column == 0:
                    label = (
                        f"{dataset}\nmaps at τ={tau:g}"
                        if name == "image"
                        else LABELS[name].replace(" ", "\n", 1)
                    )
                    axes.set_ylabel(label, fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=100))


def main(argv: list[str] | None = None) -> int:
    def versus_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--versus",
            type=Path,
            metavar="OTHER",
            help="the run directory of another variant (same preset): paired differences against it",
        )

    args = parse_arguments(__doc__, DATASETS, "attribution.{json,md,png}", argv, versus_argument)
    preset = chosen_preset(args, Preset)
    started = time.perf_counter()
    try:
        report = Bench(args.out, preset, progress=not args.dry_run).run(tuple(args.datasets), args.versus)
    except FileNotFoundError as error:  # a dataset that is not installed
        raise SystemExit(str(error)) from None
    report["wall_seconds"] = time.perf_counter() - started
    report["set"] = args.set
    if args.versus is not None:
        other_report = args.versus / "attribution.json"
        other_set = json.loads(other_report.read_text()).get("set") if other_report.is_file() else None
        report["versus"] = {"out": str(args.versus), "set": other_set}
    write_reports(
        report, "attribution", (args.out, args.results), markdown, lambda path: figure(args.out, report, path)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
