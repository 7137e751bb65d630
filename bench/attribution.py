"""Per-component attribution: the learned importances against the standard saliency baselines.

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
   benchmark's measure), and on the distance with every particle weighted 1 (``"uniform"``), which the role
   head cannot shape, so a ranking that wins there finds what sets samples apart in the features
   themselves. Also the role head's
   diagnostics: the spread of ``s`` across a sample's particles, the entropy of the
   roles, the mean ``|q|``. Written to ``<out>/<dataset>/seed<k>/attribution.json`` (and ``maps.npz``,
   every method's particle scores for the figure).
3. **Samples**: ``samples`` images of each model by DDIM (``sample_steps`` steps, deterministic), from the
   same noise for every seed and every variant (``--set``), scored against held-out images on the dataset
   classifier's features (:func:`atomgen.eval.run_eval`: FID, precision, recall, density, coverage,
   Vendi, modes): what a separation variant that sharpens the importances costs, or gains, in samples.
   Written to ``<out>/<dataset>/seed<k>/samples.json``.
4. **Report**: ``<out>/attribution.{json,md,png}``: per dataset and method, deletion and insertion AUC
   mean ± std over seeds and their gains over random; the paired difference learned − baseline with a
   95 % t-interval over seeds; the targets evaluated (:func:`targets`); the diagnostics; pixel-space
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomgen.benchmark.attribution_report import (  # the report's structure, summaries and rendering
    CURVES_OF,
    DATASETS,
    DIAGNOSTICS,
    LEARNED,
    METHODS,
    SAMPLE_METRICS,
    SUMMARY_OF,
    WEIGHTINGS,
    figure,
    markdown,
    seed_numbers,
    seed_summary,
    summarize,
    targets,
    versus,
)
from atomgen.benchmark.report import machine, paragraph
from atomgen.benchmark.stats import spread
from atomgen.seeding import generator as stream

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import chosen_preset, parse_arguments, write_reports
from training import dataset_overrides, held_out, held_out_source, sample_scores, scored, train_once

logger = logging.getLogger("bench.attribution")

# How the noise is drawn (atomgen.seeding streams keyed by purpose and index): stored with every
# measurement and sample score, so that one drawn otherwise is redone rather than mixed in.
NOISE = "atomgen.seeding"

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
        return settings | {"weightings": list(WEIGHTINGS), "diagnostics": list(DIAGNOSTICS), "noise": NOISE}

    def sampling(self) -> dict[str, Any]:
        """What stored sample scores depend on besides the model."""
        fields = ("reference_images", "samples", "sample_steps", "sample_batch")
        return {name: getattr(self, name) for name in fields} | {"noise": NOISE}


# ------------------------------------------------------------------------------------------ pure helpers
def role_diagnostics(importance: torch.Tensor, roles: torch.Tensor, charge: torch.Tensor) -> dict[str, float]:
    """Whether the role head separates particles, from ``AtomOutput``'s tensors.

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
            generator = stream(0, "sample-noise", index)  # the same noise for every seed and variant
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
            generator = stream(0, "measurement-noise", tau_index, batch)
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
        **{key: seed_summary(rows, weighting) for weighting, key in SUMMARY_OF.items()},
        "by_tau": {f"{tau:g}": seed_summary([r for r in rows if r["tau"] == tau]) for tau in preset.taus},
    }


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
