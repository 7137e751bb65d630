"""Separation at the VAE encoder: atom separation against Dispersive Loss and the plain VAE.

    python bench/vae.py --out runs/vae                        # the CPU preset, staged and resumable
    python bench/vae.py --out runs/vae --datasets mnist5k --seeds 1   # one stage of it
    python bench/vae.py --out runs/vae --datasets mnist5k --seeds 1 --shard 0/2   # and 1/2 beside it,
                                            # one per core; then --datasets mnist5k fashion-mnist the
                                            # same way, then without --shard (make vae does all)
    python bench/vae.py --out /tmp/vae --dry-run              # every code path, under a minute
    python bench/vae.py --out runs/vae-gpu --preset gpu       # bench/gpu.sh --vae: the configs' own sizes

Stages, each resumable (a finished model or score file is never redone):

1. **Models**: per dataset (``configs/<dataset>-vae.yaml``, resized by the preset), KL weight ``β`` and
   seed, an ``AutoencoderKL`` without separation (the baseline), with atom separation at the encoder (the
   posterior mean; the library's separation options) and with Dispersive Loss at the encoder. On the
   preset's ``tune`` dataset (mnist5k) each method trains at every ``λ`` of the preset on the first
   ``tune_seeds`` seeds (1 in the CPU preset, all in the GPU preset), and on its later seeds only at the
   ``λ`` those seeds chose; on the other dataset (Fashion-MNIST), only at the ``λ`` the tune dataset chose
   at the same multiple of the config's ``β``, an untouched confirmation, so mnist5k is run first.
   Trained by :func:`atomgen.train.train` into
   ``<out>/<dataset>/seed<k>/<setting>/model`` (resumed from its latest checkpoint when one exists).
   ``β`` takes the config's ``model.kl_weight`` times each of :attr:`Preset.kl_factors`.
2. **Scores**, on held-out images, by :func:`atomgen.eval.run_eval` with the model's prior samples as the
   generated side: reconstruction error (posterior mean, MSE on [0, 1] pixels), KL to the prior (nats per
   image) and active units (``Var_x(μ_u) > 0.01``, Burda et al.) on the held-out images; FID, precision,
   recall, density, coverage, Vendi and modes of the prior samples against the held-out images, on the
   dataset classifier's features. Written to ``<setting>/scores.json`` (the run_eval report and the
   reconstruction and prior-sample grids in ``<setting>/eval/``).
   With ``--shard I/N`` a worker trains and scores only every N-th model from the I-th (in a fixed order:
   seed by seed, then β, then method and λ) and writes no report: N workers side by side, one per core,
   share the work without meeting; the command without ``--shard`` then finds every model and reports.
   The models that train a chosen ``λ`` wait for the sweep that chooses it: a worker that reaches them
   before every model of the tune seeds is scored stops with a message, so the tune seeds run as a stage
   of their own (``--datasets mnist5k --seeds 1``).
3. **Report**: ``<out>/vae.{json,md,png}``: per dataset and ``β``, mean ± std over seeds of every score,
   the paired difference to the baseline with a 95 % t-interval over seeds, the ``λ`` each method gets by
   :func:`choose_weight`, and the target evaluated by :func:`check_target` and :func:`targets`.

**The λ rule** (:func:`choose_weight`, on the means over the tune seeds): among the ``λ`` whose mean
reconstruction error is at most the baseline's mean + 5 % (the benchmark's bar), the one with the highest
mean prior-sample recall; ties go to more active units. When no ``λ`` meets the bar, the one with the
lowest reconstruction error, marked inadmissible. Atom separation's ``λ`` at the config's own ``β`` is
the one for ``separation.weight`` in ``configs/<dataset>-vae.yaml``.

**The target**: at reconstruction error no worse than the baseline's + 5 %, atom separation (at
its chosen ``λ``) gives more active units and higher prior-sample recall and coverage than the baseline
and than Dispersive Loss (at its chosen ``λ``), on both datasets. "More" means the paired 95 % interval
over seeds lies above zero; a dataset meets the target when it does so at every ``β``.

**Held-out images.** Every model trains on a fixed subset of its dataset (``data.limit``); the held-out
images are those of the whole dataset whose pixels appear nowhere in that subset (bench/training.py's
``held_out_data``), the same for every model. mnist5k has only 5,000 images, so its models train on 4,500
(4,000 in the GPU preset, which scores 1,000); Fashion-MNIST's train on the config's fixed 10,000 of the
60,000 training images.
Every seed of every setting trains on the same images in the same order (``train.seed`` fixes the
initial weights and the batches) and its prior samples decode the same draws ``z ~ N(0, I)``, so the
differences to the baseline are paired.

**Cost of the CPU preset.** VAEs of the configs' architecture (``[32, 64]``, 4 latent channels) at 16×16,
1,000 steps each: 2 ``β`` × (7 models on mnist5k's seed 0: the baseline and 3 ``λ`` of each method, + 3
on each later seed and on each of Fashion-MNIST's 3 seeds: the baseline and each method's chosen ``λ``) =
44 VAEs; the configs' own 3,000 steps at 28×28 (estimated at about 0.75 s/step without separation on 2
free cores) would take more than a day. Measured with two workers side by side (``--shard``, one thread
each, on a 2-core x86_64 CPU machine): about 11–12 minutes per baseline or Dispersive Loss model and
18 per atom-separation model (64 particles per image, 8,192 per batch), training and scoring (500
held-out images, 500 prior samples) together. That is about 3.1 hours on 2 cores for mnist5k and 2.1 for
Fashion-MNIST. The sweep on every seed (the ``λ`` chosen from 3 seeds' means) would add about 2.0 hours.
The GPU preset trains 5 seeds × 2 ``β`` × (9 + 3) = 120 VAEs at the configs' own sizes (not timed: no GPU
was at hand; likely hours).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atomgen.benchmark.report import machine, paragraph
from atomgen.benchmark.vae_report import (  # the report's structure, the target, the rendering
    DATASETS,
    METRICS,
    admissible,
    check_target,
    figure,
    markdown,
    score_row,
    targets,
)

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import chosen_preset, parse_arguments, write_reports
from training import dataset_overrides, held_out_source, sample_scores, scored, train_once

logger = logging.getLogger("bench.vae")

_CPU_RECIPE = (  # the configs' VAE at 16×16 and a third of their steps: 11–18 minutes a model (docstring)
    "data.resolution=16",
    "train.steps=1000",
    "train.checkpoint_every=250",
)
_TOY = (  # dry run: a toy VAE on 64 training images, 4 steps
    "data.limit=64",
    "data.resolution=16",
    "model.block_out_channels=[8,16]",
    "model.norm_num_groups=4",
    "train.steps=4",
    "train.batch_size=16",
    "train.checkpoint_every=4",
    "train.log_every=1",
)


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark run.

    Attributes:
        seeds: model seeds per setting.
        kl_factors: the KL weights ``β``, as multiples of the config's ``model.kl_weight`` (1e-3 in both
            VAE configs). 1 is the config. 4 is meant to collapse the baseline partly, chosen by argument
            rather than measured (a dry run is too short to show collapse): the loss is the pixel MSE (in
            [-1, 1]) plus ``β`` times the KL summed over units, so a unit that costs 2 nats stays active
            only while it removes more than 0.002 of the MSE at the config's ``β``, 0.008 at 4×: a sizeable
            share of a trained VAE's few hundredths, which should close the units that carry least and keep
            the strongest; 10× (0.02 a unit) risks closing nearly all. The report's active units show
            whether it did.
        weights: per method, the ``λ`` swept (around the library defaults, 0.3 for atom separation and
            0.03 for Dispersive Loss, and the 0.1 the VAE configs had pinned before it).
        tune: the dataset whose sweep chooses every method's ``λ``; the others train each method only at
            that choice (``None``: every dataset sweeps and chooses its own).
        tune_seeds: the first seeds of the tune dataset, which sweep every ``λ`` and choose from their
            means (``None``: all); its later seeds, like the other datasets, train each method at the
            chosen ``λ`` only. 1 in the CPU preset, which two cores could not afford at 3 seeds.
        overrides: per dataset, config overrides on top of ``configs/<dataset>-vae.yaml``; each dataset's
            ``data.limit`` must leave at least ``images`` held out.
        images: held-out images per dataset, for every score.
        samples: prior samples per model.
        batch_size: images per forward pass when scoring (it fixes how the prior draws are batched).
    """

    seeds: int = 3
    kl_factors: tuple[float, ...] = (1.0, 4.0)
    weights: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("atom", (0.03, 0.1, 0.3)),
        ("dispersive", (0.01, 0.03, 0.1)),
    )
    overrides: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("mnist5k", ("data.limit=4500", *_CPU_RECIPE)),
        ("fashion-mnist", _CPU_RECIPE),
    )
    images: int = 500
    samples: int = 500
    batch_size: int = 250
    tune: str | None = "mnist5k"
    tune_seeds: int | None = 1

    @classmethod
    def named(cls, name: str) -> Preset:
        if name == "cpu":
            return cls()
        if name == "gpu":  # the configs' own sizes (28×28, 3,000 steps), a wider sweep, more images
            return cls(
                seeds=5,
                weights=(("atom", (0.03, 0.1, 0.3, 1.0)), ("dispersive", (0.01, 0.03, 0.1, 0.3))),
                overrides=(("mnist5k", ("data.limit=4000",)), ("fashion-mnist", ())),
                images=1000,
                samples=1000,
                batch_size=1000,
                tune_seeds=None,
            )
        if name == "dry-run":
            return cls(
                seeds=2,
                weights=(("atom", (0.1, 0.3)), ("dispersive", (0.03,))),
                overrides=tuple((dataset, _TOY) for dataset in DATASETS),
                images=24,
                samples=24,
                batch_size=24,
            )
        raise ValueError(f"unknown preset {name!r}; known: cpu, gpu, dry-run")

    def overrides_of(self, dataset: str) -> tuple[str, ...]:
        return dataset_overrides(self.overrides, dataset)

    def measurement(self) -> dict[str, int]:
        """What a stored score depends on besides the model: a different value means it is redone."""
        return {"images": self.images, "samples": self.samples, "batch_size": self.batch_size}


@dataclass(frozen=True)
class Setting:
    """One trained VAE: ``method`` at separation weight ``weight`` (0 for the baseline), KL weight ``β``."""

    method: str
    kl_weight: float
    weight: float = 0.0

    @property
    def name(self) -> str:
        head = "baseline" if self.method == "baseline" else f"{self.method}-{self.weight:g}"
        return f"{head}-kl{self.kl_weight:g}"


# ------------------------------------------------------------------------------------------ the rules
def choose_weight(candidates: dict[float, dict[str, float]], baseline: dict[str, float]) -> dict[str, Any]:
    """The ``λ`` of one method at one ``β`` (see the module docstring), from mean scores over seeds.

    Args:
        candidates: ``λ → {"reconstruction_mse", "recall", "active_units", ...}``, means over seeds.
        baseline: the baseline's means at the same ``β``.

    Returns:
        ``{"weight": λ, "admissible": whether it meets the reconstruction bar}``.
    """
    passing = [
        w
        for w, s in candidates.items()
        if admissible(s["reconstruction_mse"], baseline["reconstruction_mse"])
    ]
    if passing:
        weight = max(passing, key=lambda w: (candidates[w]["recall"], candidates[w]["active_units"]))
        return {"weight": weight, "admissible": True}
    weight = min(candidates, key=lambda w: candidates[w]["reconstruction_mse"])
    return {"weight": weight, "admissible": False}


def choose(per_seed: dict[Setting, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Each method's :func:`choose_weight` at one ``β``, from the mean scores of ``per_seed`` (setting →
    its scores seed by seed; exactly one baseline)."""
    means = {s: {m: _mean(values, m) for m in METRICS} for s, values in per_seed.items()}
    (baseline,) = [s for s in per_seed if s.method == "baseline"]
    return {
        method: choose_weight({s.weight: means[s] for s in per_seed if s.method == method}, means[baseline])
        for method in ("atom", "dispersive")
    }


def compare(
    per_seed: dict[Setting, list[dict[str, float]]],
    chosen: dict[str, dict[str, Any]] | None = None,
    train_seconds: dict[Setting, list[float | None]] | None = None,
) -> dict[str, Any]:
    """One dataset at one ``β``: the table rows, each method's chosen ``λ`` and the target.

    Args:
        per_seed: setting → its scores seed by seed, from seed 0 (a swept ``λ`` may have fewer seeds
            than the baseline and the chosen ones); exactly one baseline, and atom separation and
            Dispersive Loss at one ``λ`` or more.
        chosen: method → its :func:`choose_weight` choice (default: :func:`choose` on ``per_seed``).
        train_seconds: setting → training seconds per seed, for the rows.
    """
    (baseline_setting,) = [s for s in per_seed if s.method == "baseline"]
    baseline = per_seed[baseline_setting]
    rows = [
        score_row(s, values, baseline[: len(values)], (train_seconds or {}).get(s, []))
        for s, values in per_seed.items()
    ]
    chosen = chosen or choose(per_seed)
    picked = {
        method: per_seed[Setting(method, baseline_setting.kl_weight, choice["weight"])]
        for method, choice in chosen.items()
    }
    target = check_target(picked["atom"], baseline, picked["dispersive"])
    return {"rows": rows, "chosen": chosen, "target": target}


def _mean(rows: list[dict[str, float]], metric: str) -> float:
    return statistics.fmean(row[metric] for row in rows)


# ------------------------------------------------------------------------------------------ the runs
class Bench:
    """The stages above, writing ``<out>/<dataset>/seed<k>/<setting>/{model,eval,scores.json,train.json}``."""

    def __init__(
        self, out: Path, preset: Preset, progress: bool = True, shard: tuple[int, int] | None = None
    ):
        self.out, self.preset, self.progress, self.shard = out, preset, progress, shard
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._real: dict[str, Any] = {}
        self._parts: dict[str, dict[str, Any]] = {}  # per dataset, what dataset() returned
        self._tuned: dict[str, dict[float, dict[str, dict[str, Any]]]] = {}  # per tune dataset

    def folder(self, dataset: str, seed: int, setting: Setting) -> Path:
        return self.out / dataset / f"seed{seed}" / setting.name

    def config(self, dataset: str, seed: int = 0, setting: Setting | None = None):
        """The experiment of one model; without ``setting``, the dataset's resized config as it is."""
        from atomgen.train.config import ExperimentConfig

        path = Path(f"configs/{dataset}-vae.yaml")
        if not path.is_file():
            raise SystemExit(f"no VAE config {path} for dataset {dataset!r}")
        overrides = list(self.preset.overrides_of(dataset))
        if setting is not None:
            method = "none" if setting.method == "baseline" else setting.method
            overrides += [
                f"separation.method={method}",
                f"separation.weight={_number(setting.weight)}",
                f"model.kl_weight={_number(setting.kl_weight)}",
                f"train.seed={seed}",
                f"train.output_dir={self.folder(dataset, seed, setting) / 'model'}",
            ]
        return ExperimentConfig.from_yaml(path, overrides)

    def settings(self, dataset: str, seed: int) -> dict[float, list[Setting]]:
        """Per ``β``, the models of one seed: the baseline, then each method at each of its ``λ`` (the
        tune dataset's first ``tune_seeds`` seeds) or at the ``λ`` those seeds chose at the same multiple
        of the config's ``β`` (every other seed and dataset)."""
        if self.sweeps(dataset, seed):
            return self._models(dataset)
        return self._models(dataset, self.tuned(dataset))

    def sweeps(self, dataset: str, seed: int) -> bool:
        """Whether ``seed`` of ``dataset`` trains every ``λ`` of the preset."""
        return self.preset.tune in (None, dataset) and seed < self.tune_seeds()

    def tune_seeds(self) -> int:
        return min(self.preset.tune_seeds or self.preset.seeds, self.preset.seeds)

    def _models(
        self, dataset: str, chosen: dict[float, dict[str, dict[str, Any]]] | None = None
    ) -> dict[float, list[Setting]]:
        """Per ``β``: the baseline and each method at every ``λ`` of the preset, or at the ``chosen``."""
        config_kl = self.config(dataset).model.kl_weight
        table = {}
        for factor in self.preset.kl_factors:
            kl = config_kl * factor
            weights = self.preset.weights
            if chosen is not None:
                weights = tuple((method, (chosen[factor][method]["weight"],)) for method, _ in weights)
            table[kl] = [Setting("baseline", kl)]
            table[kl] += [Setting(m, kl, w) for m, choices in weights for w in choices]
        return table

    def jobs(self, dataset: str) -> Iterator[tuple[int, Setting]]:
        """Every model of ``dataset`` as ``(seed, setting)``, in the order they are trained: seed by seed
        (so ``--seeds 1`` is the start of the full run), then β, then method and λ. Lazy: the seeds after
        the tune seeds ask for the tune seeds' choice only when they are reached."""
        for seed in range(self.preset.seeds):
            for settings in self.settings(dataset, seed).values():
                for setting in settings:
                    yield seed, setting

    def share(self, dataset: str) -> None:
        """Train and score this worker's share of ``dataset`` (``--shard``): every N-th job from the I-th."""
        index, count = self.shard or (0, 1)
        for seed, setting in itertools.islice(self.jobs(dataset), index, None, count):
            self.score(dataset, seed, setting)

    def tuned(self, dataset: str) -> dict[float, dict[str, dict[str, Any]]]:
        """``β`` multiple → method → the :func:`choose_weight` choice of the tune dataset's sweep (its
        first ``tune_seeds`` seeds; the dataset's own when there is no tune dataset), run when needed."""
        tune = self.preset.tune or dataset
        if tune in self._tuned:
            return self._tuned[tune]
        seeds = range(self.tune_seeds())
        sweep = self._models(tune)
        jobs = [(seed, s) for seed in seeds for settings in sweep.values() for s in settings]
        missing = [job for job in jobs if not (self.folder(tune, *job) / "scores.json").is_file()]
        if self.shard is not None and missing:  # a worker must not train the other workers' tune models
            raise SystemExit(
                f"{len(missing)} models of the {tune} sweep (seeds < {len(seeds)}) are not scored yet, "
                "and they choose the λ of every later model: let those shards finish first (--datasets "
                f"{tune} --seeds {len(seeds)} --shard I/N), or run without --shard"
            )
        scores = {(seed, s): self.score(tune, seed, s)["scores"] for seed, s in jobs}
        self._tuned[tune] = {
            factor: choose({s: [scores[seed, s] for seed in seeds] for s in settings})
            for factor, settings in zip(self.preset.kl_factors, sweep.values(), strict=True)
        }
        return self._tuned[tune]

    def real(self, dataset: str):
        """The held-out images of ``dataset`` (a ``TensorSource`` named after it, with labels), once."""
        if dataset not in self._real:
            self._real[dataset] = held_out_source(self.config(dataset).data, self.preset.images)
        return self._real[dataset]

    def score(self, dataset: str, seed: int, setting: Setting) -> dict[str, Any]:
        """The scores of one model (stage 2), trained first when needed; read back when stored."""
        from atomgen.io import write_json

        folder = self.folder(dataset, seed, setting)
        path, settings = folder / "scores.json", self.preset.measurement()
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored["settings"] == settings:
                return stored
            logger.info("%s: scored with other settings; scoring again", path)
        model = train_once(self.config(dataset, seed, setting), "vae", progress=self.progress)
        logger.info("scoring %s seed %d %s", dataset, seed, setting.name)
        started = time.perf_counter()
        result = scored(
            self.real(dataset),
            model,
            flat_scores,
            out_dir=folder / "eval",
            batch_size=self.preset.batch_size,
            device=self.device,
            cache_dir=self.out / "cache",  # the held-out images' features, once per dataset
            num_samples=self.preset.samples,
        )
        stored = {"settings": settings, **result, "seconds": time.perf_counter() - started}
        write_json(path, stored)
        return stored

    def dataset(self, dataset: str) -> dict[str, Any]:
        """Stages 1–3 of one dataset: every model of every seed (seed by seed), then the tables."""
        if dataset in self._parts:
            return self._parts[dataset]
        stored = {(seed, s): self.score(dataset, seed, s) for seed, s in self.jobs(dataset)}
        choice = self.tuned(dataset)
        config_kl = self.config(dataset).model.kl_weight
        part: dict[str, Any] = {"kl_weights": {}, "extractor": next(iter(stored.values()))["extractor"]}
        for factor in self.preset.kl_factors:
            per_seed: dict[Setting, list[dict[str, float]]] = {}  # seed-major: each list in seed order
            for (_, setting), result in stored.items():
                if setting.kl_weight == config_kl * factor:
                    per_seed.setdefault(setting, []).append(result["scores"])
            seconds = {s: self._train_seconds(dataset, s, len(rows)) for s, rows in per_seed.items()}
            entry = compare(per_seed, choice[factor], seconds)
            part["kl_weights"][f"{config_kl * factor:g}"] = {"kl_weight": config_kl * factor, **entry}
        part["config"] = {
            "path": f"configs/{dataset}-vae.yaml",
            "kl_weight": config_kl,
            "atom_weight": choice[1.0]["atom"] if 1.0 in choice else None,
        }
        part["num_units"] = next(iter(stored.values()))["scores"]["num_units"]
        part["tuned_on"] = self.preset.tune if self.preset.tune not in (None, dataset) else None
        part["tune_seeds"] = self.tune_seeds()
        self._parts[dataset] = part
        return part

    def _train_seconds(self, dataset: str, setting: Setting, seeds: int) -> list[float | None]:
        files = [self.folder(dataset, seed, setting) / "train.json" for seed in range(seeds)]
        return [json.loads(f.read_text())["seconds"] if f.is_file() else None for f in files]

    def run(self, datasets: tuple[str, ...]) -> dict[str, Any] | None:
        """The report of ``datasets``; with a shard, only its share of the models and no report."""
        if self.shard is not None:
            for dataset in datasets:
                self.share(dataset)
            return None
        report: dict[str, Any] = {
            "preset": dataclasses.asdict(self.preset),
            "split": paragraph(__doc__, "Held-out images."),
            "datasets": {dataset: self.dataset(dataset) for dataset in datasets},
        }
        report["targets"] = targets(
            {
                dataset: {kl: part["target"] for kl, part in entry["kl_weights"].items()}
                for dataset, entry in report["datasets"].items()
            }
        )
        report["machine"] = machine(self.device)
        return report


def flat_scores(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of one :func:`atomgen.eval.run_eval` report that the benchmark compares."""
    vae = report["metrics"]["vae"]
    return {
        "reconstruction_mse": vae["reconstruction_mse"],
        "active_units": vae["active_units"],
        "num_units": vae["num_units"],
        "kl": vae["kl"],
        **sample_scores(report),
    }


def _number(value: float) -> str:
    """A float as YAML reads it back as a float (YAML takes ``1e-05``, Python's spelling, for a string)."""
    return format(value, ".15f").rstrip("0").rstrip(".") or "0"


def shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as ``(I, N)``, with ``0 <= I < N``."""
    index, _, count = text.partition("/")
    try:
        parsed = int(index), int(count)
    except ValueError:
        parsed = (-1, 0)
    if not 0 <= parsed[0] < parsed[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N, e.g. 0/2 and 1/2")
    return parsed


def main(argv: list[str] | None = None) -> int:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--shard",
            type=shard,
            metavar="I/N",
            help="train and score only every N-th model from the I-th, and write no report: one worker "
            "per core (0/2 and 1/2), then the command without --shard for the report",
        )

    args = parse_arguments(__doc__, DATASETS, "vae.{json,md,png}", argv, more)
    preset = chosen_preset(args, Preset)
    started = time.perf_counter()
    bench = Bench(args.out, preset, progress=not args.dry_run, shard=args.shard)
    try:
        report = bench.run(tuple(args.datasets))
    except FileNotFoundError as error:  # a dataset that is not installed
        raise SystemExit(str(error)) from None
    if report is None:
        logger.info("shard %d/%d done; the command without --shard writes the report", *args.shard)
        return 0
    report["wall_seconds"] = time.perf_counter() - started
    report["set"] = args.set
    write_reports(report, "vae", (args.out, args.results), markdown, lambda path: figure(report, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
