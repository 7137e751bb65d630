"""Diversity under classifier-free guidance: atom guidance against the interval, APG, CADS, Particle
Guidance and autoguidance, and models trained with atom separation, on class-conditional DDPMs; tuned on
mnist5k, confirmed untouched on Fashion-MNIST.

    python bench/cfg.py --out runs/cfg                       # the CPU preset, staged and resumable
    python bench/cfg.py --out runs/cfg --datasets mnist5k --seeds 1   # one stage of it
    python bench/cfg.py --out runs/cfg --train-only --shard 1/2       # one of two training workers
    python bench/cfg.py --out runs/cfg & python bench/cfg.py --out runs/cfg   # two workers share it
    python bench/cfg.py --out /tmp/cfg --dry-run             # every code path at toy sizes
    python bench/cfg.py --out runs/cfg-gpu --preset gpu      # bench/gpu.sh: larger sets, more steps

Stages, each resumable (a finished model, batch of samples or score file is never redone). Processes
on the same ``--out`` share the settings: each scores those no other live process has claimed, then waits
for the rest (:meth:`Bench.scores`; ``make cfg`` runs two); a model another process trains is waited for.

1. **Models**: per dataset and seed ``k``, ``<out>/<dataset>/seed<k>/model``, exactly what
   ``atomgen train configs/<dataset>-cfg.yaml --set train.seed=<k> --set train.output_dir=<that folder>``
   trains (16×16, v-prediction, 10 % label dropout, EMA snapshots at steps 500 and 1000), and the trained
   variants ``model-<variant>`` of :data:`VARIANTS`, the same command with their ``--set`` added.
2. **The CFG grid**: plain CFG at every ``w`` of :attr:`Preset.scales` (``w = 1`` is unguided). The
   benchmark scale ``w*`` is the largest ``w`` at which the mean class accuracy still rises
   (:func:`~atomgen.benchmark.stats.benchmark_scale`).
3. **The methods at w\\***, each with its own strength sweep on the tuning dataset (mnist5k), chosen by
   :func:`~atomgen.benchmark.stats.choose_strength`: the largest mean recall among the strengths whose
   precision is within 0.01 of plain CFG's and whose class accuracy is at most 1 point lower (the
   recall it wins back at w\\*). Beside it, for the question whether a method lies above CFG's front,
   the strength with the largest gain over that front on the tuning seed
   (:func:`~atomgen.benchmark.stats.best_front_gain`); both run on every seed. A chosen strength at an
   end of its sweep is flagged in the report. Then the combinations (atom guidance with
   the interval, APG and autoguidance), **autoguidance** over its own ``w`` grid (guided by the same
   seed's baseline snapshot at step 500 or 1000 instead of the unconditional prediction: both guides on
   the tuning seed, then the one with the largest gain over CFG's front on all seeds,
   :meth:`Bench.autoguidance`), and the **trained variants** with plain CFG from ``w = 1`` (CFG off) to
   past ``w*`` (:attr:`Preset.variant_scales`), paired by seed with the baseline models: every variant on
   the tuning seed, then the one with the largest recall gain over CFG's front on all seeds
   (:meth:`Bench.variants`).
4. **Confirmation**: the chosen strengths, guide and variant, unchanged, at the other dataset's own
   ``w*``.

Every setting is sampled and scored exactly as ``atomgen compare --extractor classifier --call-option
eta=1`` samples and scores one (:func:`atomgen.sampling.compare.sample_and_score`): ``atomgen sample``
into ``<out>/<dataset>/seed<k>/samples/<setting>/`` with the seed ``k``, which with the batch index keys
the initial noise, the noise of every step (ancestral DDIM, η = 1: :attr:`Preset.eta`) and the global
RNG that CADS draws from, from independent streams (:mod:`atomgen.seeding`). So every setting of a seed
starts from the same latents and draws the same noise: the comparison with plain CFG is paired. Batch
methods (atom guidance, Particle Guidance) act within the images of one class of a batch (the group of
their conditioning), so they never repel samples of different classes. Scores, read back from the PNG
files, are per class against that class's real images on the dataset classifier's features, averaged
over classes; class accuracy is the share of samples the classifier gives the requested label. The
report gives mean ± std over seeds, the per-seed values in the JSON, the paired difference to plain CFG
at the same ``w`` with a 95 % t-interval, and every setting's recall gain over CFG's front on both axes,
precision and class accuracy (:mod:`atomgen.benchmark.stats`).

Cost of the CPU preset, measured on this project's 2-core machine with one training beside the
benchmark (``bench-*.log`` timings): a setting of plain CFG, the interval, APG, CADS, Particle Guidance
or autoguidance (2,000 images sampled with 15 steps, then scored) takes 2–4 minutes; one with atom
guidance 7–13 (its exact pair energy over the 200 samples of a class at every step). A baseline model
trains in about 33 minutes on one core (3,000 steps at 0.65 s), a model with atom separation in about 50
(1.0 s a step, the rate the progress bar of ``atomgen train configs/mnist5k-cfg.yaml --set train.steps=12
--set separation.method=atom`` shows). Models: on mnist5k the 3 baselines, the 3 variants on seed 0 and
the chosen one on seeds 1–2; on Fashion-MNIST the 3 baselines and the chosen variant on 3 seeds: about 10
core-hours. Settings: per dataset and seed about 26 (6 grid points, 7 methods at one or two strengths,
the chosen guide's 3 autoguidance settings, atom + interval, the chosen variant's 4 grid points), about
100 minutes; on the tuning seed about 30 more (the other sweep points, guide and variants, atom + APG,
atom + autoguidance), about 2 hours: about 12 core-hours. About 11 hours on 2 cores in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomgen.benchmark import guidance_report, stats, verdict
from atomgen.benchmark.report import machine, summary, write_reports
from atomgen.benchmark.scoring import ClassScorer
from atomgen.sampling import SampleConfig
from atomgen.sampling.compare import sample_and_score
from atomgen.train.run_lock import acquire_lock, release_lock

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import LOCK_POLL_SECONDS, train_once

logger = logging.getLogger("bench.cfg")

TUNE, CONFIRM = "mnist5k", "fashion-mnist"
METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")
PEERS = ("interval", "apg", "cads", "pg")  # what atom guidance must beat at matched precision
# The trained variants: the ``--set`` overrides added to the baseline's training command.
VARIANTS: dict[str, tuple[str, ...]] = {
    "atom0.3": ("separation.method=atom", "separation.weight=0.3"),
    "atom-class0.3": ("separation.method=atom", "separation.weight=0.3", "separation.within_class=true"),
    "atom0.1": ("separation.method=atom", "separation.weight=0.1"),
}
# the ends of a method's own range, where its sweep cannot go further (APG's η: 0 drops the update's
# parallel part, 1 keeps all of it)
RANGE_ENDS = {"apg": (0.0, 1.0)}


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark run."""

    seeds: int = 3
    samples_per_class: int = 200  # 2,000 per setting over 10 classes
    inference_steps: int = 15
    # η of DDIM: 1 is ancestral sampling. With η = 0 at 15 steps this model's CFG breaks from w = 1.5 on
    # (class accuracy falls, FID 89 at w = 1.75); the fresh noise of every step corrects that drift.
    eta: float = 1.0
    scales: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    # each method's strength sweep (the interval: the step fraction where guidance starts), wide enough
    # that the chosen strength lies inside it
    strengths: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("interval", (0.1, 0.2, 0.4, 0.6)),
        ("apg", (0.0, 0.5, 1.0)),
        ("cads", (0.1, 0.25, 0.5, 1.0, 2.0)),
        ("pg", (0.02, 0.05, 0.1, 0.2)),
        ("atom", (0.01, 0.02, 0.05, 0.1)),
        ("atom-feature", (0.2, 0.4, 0.8, 1.6)),
        ("atom-sparse", (0.02, 0.05, 0.1, 0.2, 0.4)),  # hard-core: only pairs closer than the radius repel
    )
    # the combined methods and their seeds (None: all); a combination with autoguidance takes its
    # chosen guide and w
    combined: tuple[tuple[str, int | None], ...] = (
        ("atom+interval", None),
        ("atom+apg", 1),
        ("atom+autoguidance", 1),
    )
    guides: tuple[int, ...] = (500, 1000)  # autoguidance: the baseline run's snapshot steps that guide
    guide_scales: tuple[float, ...] = (1.5, 2.0, 2.5)  # autoguidance's own w grid
    variants: tuple[str, ...] = tuple(VARIANTS)
    variant_scales: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0)  # their grid: w = 1 (CFG off) up past w*
    variant_tune_seeds: int | None = 1  # every variant on these seeds (None: all); the chosen one on all
    batch_size: int = 500  # at most; batch methods act within each class of a batch
    tune_seeds: int | None = 1  # the strength sweeps' seeds (None: all); the chosen strengths on all
    # config overrides after the seed's and variant's: none in the CPU and GPU presets, so their models
    # are exactly those of the training command above
    overrides: tuple[str, ...] = ()

    @classmethod
    def named(cls, name: str) -> Preset:
        if name == "cpu":
            return cls()
        if name == "gpu":
            return cls(
                seeds=5,
                samples_per_class=500,
                inference_steps=25,
                guide_scales=(1.25, 1.5, 2.0, 2.5, 3.0),
                variant_scales=cls.scales,
                variant_tune_seeds=None,
                combined=tuple((name, None) for name, _ in cls.combined),  # every combination on all seeds
                batch_size=5000,
                tune_seeds=None,
            )
        if name == "dry-run":
            toy = ("train.steps=4", "train.checkpoint_every=4", "train.snapshot_steps=[2]")
            return cls(
                seeds=2,
                samples_per_class=6,
                inference_steps=2,
                scales=(1.0, 2.0, 3.0),
                strengths=tuple((m, s[:2]) for m, s in cls.strengths),
                guides=(2,),
                guide_scales=(2.0,),
                variants=("atom-class0.3", "atom0.3"),
                variant_scales=(1.0, 2.0),
                batch_size=4,
                overrides=toy,
            )
        raise ValueError(f"unknown preset {name!r}; known: cpu, gpu, dry-run")

    def only(self, methods: list[str]) -> Preset:
        """This preset with the given methods only (each combined one needs all of its parts)."""
        missing = {p for name in methods if "+" in name for p in name.split("+")} - {*methods, "autoguidance"}
        if missing:
            raise SystemExit(f"--methods: the combined methods also need {sorted(missing)}")
        return dataclasses.replace(
            self,
            strengths=tuple((m, s) for m, s in self.strengths if m in methods),
            combined=tuple((c, n) for c, n in self.combined if c in methods),
            guides=self.guides if any("autoguidance" in m for m in methods) else (),
        )


@dataclass(frozen=True)
class Setting:
    """One way of sampling: ``method`` at ``strength`` on top of CFG at ``scale``."""

    method: str  # "cfg", "autoguidance", a method of Preset.strengths, or a combined one
    scale: float
    strength: float = 0.0
    parts: tuple[tuple[str, float], ...] = ()  # the strengths of a combined method's parts
    model: str = ""  # a trained variant of VARIANTS ("": the baseline models)
    guide: int | None = None  # autoguidance: the snapshot step of the seed's baseline run that guides

    @property
    def name(self) -> str:
        bits = [self.method]
        if self.parts:
            bits.append("+".join(f"{p}{s:g}" for p, s in self.parts))
        elif self.method not in ("cfg", "autoguidance"):
            bits.append(f"{self.strength:g}")
        if self.guide is not None:
            bits.append(f"step{self.guide}")
        name = "-".join([*bits, f"w{self.scale:g}"])
        return f"trained-{self.model}-{name}" if self.model else name


def specs(setting: Setting, guide: Path | None = None) -> list[str]:
    """The setting's methods in the grammar of :mod:`atomgen.pipelines.methods` (``NAME[:SCALE][,KEY=VALUE...]``;
    atom guidance and Particle Guidance normalised, the registry's default)."""
    parts = dict(setting.parts) if setting.parts else {setting.method: setting.strength}
    methods = [f"{m}:{s:g}" for m, s in parts.items() if m not in ("cfg", "autoguidance")]
    if "autoguidance" in setting.method:
        if guide is None:
            raise ValueError(f"{setting.name} needs the guiding model's folder")
        methods.append(f"autoguidance:{setting.scale:g},guide={guide}")
    return methods


# ------------------------------------------------------------------------------------------ sampling
def sample_config(
    pipeline: Path, folder: Path, setting: Setting, seed: int, preset: Preset, classes: int, flow: bool,
    guide: Path | None = None, progress: bool = False,
) -> SampleConfig:  # fmt: skip
    """The ``atomgen sample`` run of one setting and seed: ``samples_per_class`` images of every class,
    the setting's methods through the registry, and a seed that keys every batch's noise, so every
    setting of a seed starts from the same latents and draws the same noise (paired settings)."""
    eta = 0.0 if flow else preset.eta  # flow models: deterministic Euler steps, no η
    return SampleConfig(
        str(pipeline), folder, num_samples=classes * preset.samples_per_class, guidance_scale=setting.scale,
        steps=preset.inference_steps, batch_size=preset.batch_size, seed=seed,
        methods=tuple(specs(setting, guide)), call_options={"eta": eta}, progress=progress,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ the runs
Table = dict[Setting, list[dict[str, float]]]  # a setting's scores, one row per seed


class Bench:
    """The stages above, writing ``<out>/<dataset>/seed<k>/{model*,scores}`` and the report."""

    def __init__(self, out: Path, preset: Preset, progress: bool = True, model: str = "cfg", **flags: bool):
        self.out, self.preset, self.progress, self.model = out, preset, progress, model
        self.grid_only = flags.get("grid_only", False)
        # report on the scores already written, from the seeds that have all a table needs: an interim
        # report of a benchmark still running (it never trains or samples)
        self.cached_only = flags.get("cached_only", False)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.scorers: dict[str, ClassScorer] = {}

    def run_dir(self, dataset: str, seed: int, variant: str = "") -> Path:
        return self.out / dataset / f"seed{seed}" / ("model" + (f"-{variant}" if variant else ""))

    def config(self, dataset: str, seed: int, variant: str = ""):
        """The training config of one model: the training command's ``--set`` overrides, in its order."""
        from atomgen.train.config import ExperimentConfig

        path = Path(f"configs/{dataset}-{self.model}.yaml")
        if not path.is_file():
            known = sorted(p.name for p in Path("configs").glob(f"*-{self.model}.yaml"))
            raise SystemExit(
                f"no model config {path} for dataset {dataset!r} (--model {self.model}: {known})"
            )
        if variant and variant not in VARIANTS:
            raise SystemExit(f"unknown trained variant {variant!r}; known: {sorted(VARIANTS)}")
        overrides = [f"train.seed={seed}", f"train.output_dir={self.run_dir(dataset, seed, variant)}"]
        return ExperimentConfig.from_yaml(
            path, [*overrides, *VARIANTS.get(variant, ()), *self.preset.overrides]
        )

    def pipeline(self, dataset: str, seed: int, variant: str = ""):
        from atomgen.pipelines import AtomClassConditionalPipeline

        folder = train_once(self.config(dataset, seed, variant), "pipeline", progress=self.progress)
        pipe = AtomClassConditionalPipeline.from_pretrained(folder).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def guides(self, dataset: str) -> tuple[int, ...]:
        """The preset's guide steps that the baseline runs snapshot (``train.snapshot_steps``)."""
        saved = set(self.config(dataset, 0).train.snapshot_steps)
        if missing := [g for g in self.preset.guides if g not in saved]:
            logger.info(
                "%s: no snapshots at steps %s (train.snapshot_steps): no autoguidance", dataset, missing
            )
        return tuple(g for g in self.preset.guides if g in saved)

    def path(self, dataset: str, seed: int, setting: Setting) -> Path:
        """The setting's scores, on the dataset classifier's features."""
        return self.out / dataset / f"seed{seed}" / "scores" / "classifier" / f"{setting.name}.json"

    def score(self, dataset: str, seed: int, setting: Setting, pipes: dict[str, Any]) -> dict[str, float]:
        path = self.path(dataset, seed, setting)
        if path.is_file():
            return json.loads(path.read_text())
        if setting.model not in pipes:  # loaded once per seed and model, only when something is missing
            pipes[setting.model] = self.pipeline(dataset, seed, setting.model)
        pipe = pipes[setting.model]
        config = self.config(dataset, seed, setting.model)
        guide = None
        if setting.guide is not None:
            guide = self.run_dir(dataset, seed) / "snapshots" / f"step-{setting.guide}" / "pipeline"
        run = sample_config(
            self.run_dir(dataset, seed, setting.model) / "pipeline",
            self.out / dataset / f"seed{seed}" / "samples" / setting.name,
            setting, seed, self.preset, config.model.num_classes,
            flow=getattr(pipe, "is_flow_matching", False), guide=guide, progress=self.progress,
        )  # fmt: skip

        def score(images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
            if dataset not in self.scorers:
                self.scorers[dataset] = ClassScorer.for_dataset(
                    dataset, config.data.resolution, config.data.limit, self.device
                )
            return self.scorers[dataset](images, labels)

        started = time.perf_counter()
        scores = sample_and_score(run, pipe, path, score)
        assert scores is not None  # one process
        brief = ", ".join(f"{m} {scores[m]:.3f}" for m in METRICS)
        logger.info(
            "%s seed %d %s (%.0f s): %s", dataset, seed, setting.name, time.perf_counter() - started, brief
        )
        return scores

    def scores(self, dataset: str, settings: list[Setting], seeds: int | None = None) -> Table:
        """Every setting on the first ``seeds`` seeds (default: all). With ``cached_only``, the first
        seeds that have every setting scored already.

        Benchmark processes on the same ``out`` share the work: each scores the settings that no other
        is scoring (a claim per setting and seed), then waits for the others' scores, and takes over
        the claim of a process that has stopped."""
        count = min(seeds or self.preset.seeds, self.preset.seeds)
        if self.cached_only:  # the seeds stay consecutive, so that every table is paired
            complete = (all(self.path(dataset, k, s).is_file() for s in settings) for k in range(count))
            count = next((k for k, whole in enumerate(complete) if not whole), count)
        done: dict[tuple[int, Setting], dict[str, float]] = {}
        waiting = []
        for seed in range(count):
            pipes: dict[str, Any] = {}  # loaded once per seed and model, only when something is missing
            for setting in settings:
                scores = self.claim_and_score(dataset, seed, setting, pipes)
                if scores is None:
                    waiting.append((seed, setting))
                else:
                    done[seed, setting] = scores
        while waiting:
            logger.info("%s: waiting for %d setting(s) that other processes score", dataset, len(waiting))
            time.sleep(LOCK_POLL_SECONDS)
            for seed, setting in list(waiting):
                if (scores := self.claim_and_score(dataset, seed, setting, {})) is not None:
                    done[seed, setting] = scores
                    waiting.remove((seed, setting))
        return {s: [done[k, s] for k in range(count)] for s in settings}

    def claim_and_score(
        self, dataset: str, seed: int, setting: Setting, pipes: dict[str, Any]
    ) -> dict[str, float] | None:
        """The setting's scores, scored here unless another live process is scoring it (``None``)."""
        if self.path(dataset, seed, setting).is_file():
            return self.score(dataset, seed, setting, pipes)  # read back
        claim = self.out / dataset / f"seed{seed}" / "claims" / f"{setting.name}.lock"
        if acquire_lock(claim) is not None:
            return None
        try:
            return self.score(dataset, seed, setting, pipes)  # read back when scored meanwhile
        finally:
            release_lock(claim)

    def run(self, datasets: tuple[str, ...]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "preset": dataclasses.asdict(self.preset),
            "model": self.model,
            "datasets": {},
        }
        tuned: dict[str, Any] = {}  # the choices made on the first dataset, kept for the others
        for dataset in datasets:
            part = self.dataset(dataset, tuned)
            if part is not None:
                report["datasets"][dataset] = part
        standings = verdict.standings(report)
        report["verdict"] = {"standings": standings, "goal": verdict.goal(standings)}
        report["machine"] = machine(self.device)
        return report

    def dataset(self, dataset: str, tuned: dict[str, Any]) -> dict[str, Any] | None:
        """One dataset's part of the report (``None``: ``--cached-only`` before any grid is complete)."""
        preset = self.preset
        grid = self.scores(dataset, [Setting("cfg", w) for w in preset.scales])
        if not next(iter(grid.values())):
            logger.info("%s: no seed has the whole grid scored yet; left out of the report", dataset)
            return None
        by_scale = {s.scale: rows for s, rows in grid.items()}
        w = stats.benchmark_scale({scale: _mean(rows, "accuracy") for scale, rows in by_scale.items()})
        seeds = len(by_scale[w])  # every table on the grid's seeds at most (fewer: --cached-only)
        part: dict[str, Any] = {"seeds": seeds, "benchmark_scale": w, "grid": _rows(grid, by_scale)}
        if self.grid_only:
            return part
        sweeps: Table = {}
        if dataset == TUNE or not tuned:  # tune every method's strength here, once
            tune = _at_most(preset.tune_seeds, seeds)
            sweeps = self.scores(
                dataset, [Setting(m, w, s) for m, grid_ in preset.strengths for s in grid_], tune
            )
            if any(not rows for rows in sweeps.values()):
                return part  # --cached-only, and the sweeps are not all scored yet
            plain = {m: _mean(by_scale[w][:tune], m) for m in METRICS}
            front = stats.grid_by_seed(by_scale)
            chosen, for_front = {}, {}
            for method, strengths in preset.strengths:
                rows = {s: sweeps[Setting(method, w, s)] for s in strengths}
                means = {s: {m: _mean(rows[s], m) for m in METRICS} for s in strengths}
                chosen[method] = stats.choose_strength(means, plain)
                # no strength comparable with the front anywhere: the strength rule's
                gain = {s: (stats.best_front_gain(front, rows[s]), s == chosen[method]) for s in strengths}
                for_front[method] = max(strengths, key=gain.__getitem__)
            tuned |= {"on": dataset, "chosen": chosen, "for_front": for_front}
        chosen, for_front = tuned["chosen"], tuned["for_front"]
        picked = [Setting(m, w, strengths[m]) for strengths in (chosen, for_front) for m in strengths]
        table = self.scores(dataset, list(dict.fromkeys(picked)), seeds)
        table |= self.autoguidance(dataset, tuned, by_scale, seeds)
        everywhere = [*picked, *(self.guided(tuned["guide"][0]) if "guide" in tuned else ())]
        for name, count in preset.combined:
            parts = tuple((p, chosen[p]) for p in name.split("+") if p != "autoguidance")
            if "autoguidance" in name and "guide" not in tuned:
                continue  # no autoguidance scored (no snapshots, --methods, or --cached-only)
            guide, scale = tuned["guide"] if "autoguidance" in name else (None, w)
            setting = Setting(name, scale, parts=parts, guide=guide)
            table |= self.scores(dataset, [setting], _at_most(count, seeds))
            everywhere += [setting] if count is None else []
        table |= self.variants(dataset, tuned, by_scale, seeds)
        everywhere += self.trained(tuned["variant"]) if "variant" in tuned else []
        table = {s: rows for s, rows in table.items() if rows}  # none yet: --cached-only
        if not table:
            return part | {"method_seeds": 0}  # --cached-only, before any setting of this dataset
        shown = {**sweeps, **table} if dataset == tuned["on"] else table
        part |= {
            # the seeds of every setting meant for all of them: fewer than the grid's in an interim report
            "method_seeds": min((len(table.get(s, [])) for s in everywhere), default=seeds),
            "tuned_on": tuned["on"],
            "chosen": chosen,
            "ends": _ends(chosen, preset.strengths),
            "for_front": for_front,
            "front_ends": _ends(for_front, preset.strengths),
            "guide": tuned.get("guide"),
            "variant": tuned.get("variant"),
            "methods": _rows(shown, by_scale),
            "targets": stats.recovery(
                by_scale[min(by_scale)],
                by_scale[w],
                {
                    s.method: rows
                    for s, rows in table.items()
                    if not s.model and s.guide is None and chosen.get(s.method, s.strength) == s.strength
                },
                PEERS,
            ),
            "front": {
                s.name: {
                    a: g.to_dict() for a, g in stats.front_gaps(stats.grid_by_seed(by_scale), rows).items()
                }
                for s, rows in table.items()
            },
        }
        return part

    def models(self, datasets: tuple[str, ...]) -> list[tuple[str, int, str]]:
        """Every model the benchmark samples, as ``(dataset, seed, variant)``, in the order it needs them:
        the baselines, the variants of the tuning seeds, then the chosen variant on every seed once the
        written scores choose one (until then it cannot be known)."""
        preset, tune = self.preset, _at_most(self.preset.variant_tune_seeds, self.preset.seeds)
        models = [(d, k, "") for d in datasets for k in range(preset.seeds)]
        models += [(datasets[0], k, v) for k in range(tune) for v in preset.variants]
        if preset.variants:
            scored = Bench(self.out, preset, False, self.model, cached_only=True)
            chosen = scored.run(datasets[:1])["datasets"]
            variant = next(iter(chosen.values()), {}).get("variant")
            if variant:
                models += [(d, k, variant) for d in datasets for k in range(preset.seeds)]
        return list(dict.fromkeys(models))

    def train(self, datasets: tuple[str, ...], shard: int = 0, shards: int = 1) -> None:
        """Train this shard's share of :meth:`models` (every ``shards``-th, from ``shard`` on): shards run
        side by side, and beside the benchmark, which waits for a model another process trains."""
        for dataset, seed, variant in self.models(datasets)[shard::shards]:
            train_once(self.config(dataset, seed, variant), "pipeline", progress=self.progress)

    def autoguidance(
        self, dataset: str, tuned: dict[str, Any], by_scale: dict[float, list[dict[str, float]]], seeds: int
    ) -> Table:
        """Autoguidance over :attr:`Preset.guide_scales` with every guide of :attr:`Preset.guides` on the
        tuning seeds of the first dataset; then the guide and ``w`` with the largest gain over CFG's
        front there (:func:`~atomgen.benchmark.stats.best_front_gain`: the combinations' guide and
        ``w``), that guide's ``w`` grid on every seed and on the other datasets."""
        trials: Table = {}
        guides = self.guides(dataset)
        if guides and "guide" not in tuned:
            tune = _at_most(self.preset.tune_seeds, seeds)
            trials, best = self.trials(dataset, [s for g in guides for s in self.guided(g)], tune, by_scale)
            if best is None:
                return trials
            tuned["guide"] = (best.guide, best.scale)
        if "guide" not in tuned:
            return trials
        return trials | self.scores(dataset, self.guided(tuned["guide"][0]), seeds)

    def variants(
        self, dataset: str, tuned: dict[str, Any], by_scale: dict[float, list[dict[str, float]]], seeds: int
    ) -> Table:
        """The trained variants over :attr:`Preset.variant_scales`: every one on the tuning seeds of the
        first dataset, then the one with the largest mean recall gain over CFG's front there (on either
        axis, at any of its ``w``, where the gain counts: :func:`~atomgen.benchmark.stats.best_front_gain`)
        on every seed and on the other datasets, as the methods' strengths are chosen and confirmed."""
        preset = self.preset
        trials: Table = {}
        if preset.variants and "variant" not in tuned:
            tune = _at_most(preset.variant_tune_seeds, seeds)
            trials, best = self.trials(
                dataset, [s for v in preset.variants for s in self.trained(v)], tune, by_scale
            )
            if best is None:
                return trials
            tuned["variant"] = best.model
        if "variant" not in tuned:
            return trials
        return trials | self.scores(dataset, self.trained(tuned["variant"]), seeds)

    def guided(self, guide: int) -> list[Setting]:
        """Autoguidance by the snapshot at step ``guide`` over :attr:`Preset.guide_scales`."""
        return [Setting("autoguidance", w, guide=guide) for w in self.preset.guide_scales]

    def trained(self, variant: str) -> list[Setting]:
        """The trained variant under plain CFG over :attr:`Preset.variant_scales`."""
        return [Setting("cfg", w, model=variant) for w in self.preset.variant_scales]

    def trials(
        self, dataset: str, settings: list[Setting], seeds: int, by_scale: dict[float, list[dict[str, float]]]
    ) -> tuple[Table, Setting | None]:
        """The settings on the first ``seeds`` seeds, and the one with the largest gain over CFG's front
        (:func:`~atomgen.benchmark.stats.best_front_gain`; ties: the first), ``None`` with
        ``--cached-only`` while some are not scored yet."""
        table = self.scores(dataset, settings, seeds)
        if any(not rows for rows in table.values()):
            return table, None
        front = stats.grid_by_seed(by_scale)
        return table, max(settings, key=lambda s: stats.best_front_gain(front, table[s]))


def _ends(chosen: dict[str, float], strengths: tuple[tuple[str, tuple[float, ...]], ...]) -> dict[str, str]:
    """The methods whose chosen strength is at an end of its sweep (not the end of the method's range)."""
    ends = {}
    for method, grid in strengths:
        end = stats.grid_end(chosen[method], grid)
        if end is not None and chosen[method] not in RANGE_ENDS.get(method, ()):
            ends[method] = end
    return ends


def _rows(table: Table, by_scale: dict[float, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per setting: every metric's per-seed values, mean, std, and its paired difference to the baseline
    models' plain CFG at the same ``w`` (same seeds, same noise) when the grid has that ``w``."""
    rows = []
    for setting, scores in table.items():
        row: dict[str, Any] = {"setting": setting.name, **dataclasses.asdict(setting)}
        reference = by_scale.get(setting.scale)
        for metric in METRICS:
            values = [r[metric] for r in scores]
            row[metric] = summary(values, None if reference is None else [r[metric] for r in reference])
        rows.append(row)
    return rows


def _at_most(seeds: int | None, limit: int) -> int:
    """``seeds`` (``None``: all) but no more than ``limit``."""
    return min(seeds or limit, limit)


def _mean(rows: list[dict[str, float]], metric: str) -> float:
    return statistics.fmean(row[metric] for row in rows)


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
        "class-conditional DiT rectified flows, without trained variants); reports other than cfg are "
        "named cfg-<model>.*",
    )
    parser.add_argument("--scales", type=float, nargs="+", help="the CFG grid (default: the preset's)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[m for m, _ in Preset.strengths] + [c for c, _ in Preset.combined] + ["autoguidance"],
        help="only these methods (default: all); a combined one needs its parts",
    )
    parser.add_argument(
        "--variants", nargs="*", choices=sorted(VARIANTS), help="trained variants (default: the preset's)"
    )
    parser.add_argument("--grid-only", action="store_true", help="stop after the CFG grid (no methods)")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="an interim report from the scores written so far (never trains or samples)",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="only train the models (the chosen variant's too, once the scores choose it); with --shard",
    )
    parser.add_argument(
        "--shard", default="0/1", metavar="K/N", help="with --train-only: the K-th of N workers (default 0/1)"
    )
    parser.add_argument("--results", type=Path, help="also write the tables and the plot here (results/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    preset = Preset.named("dry-run" if args.dry_run else args.preset)
    changes: dict[str, Any] = {
        "seeds": args.seeds,
        "eta": args.eta,
        "scales": args.scales and tuple(sorted(args.scales)),
    }
    changes["variants"] = (
        tuple(args.variants) if args.variants is not None else (None if args.model == "cfg" else ())
    )
    preset = dataclasses.replace(preset, **{k: v for k, v in changes.items() if v is not None})
    if args.methods:
        preset = preset.only(args.methods)
    bench = Bench(
        args.out, preset, not args.dry_run, args.model, grid_only=args.grid_only, cached_only=args.cached_only
    )
    if args.train_only:
        shard, _, shards = args.shard.partition("/")
        if not (shard.isdigit() and shards.isdigit() and int(shard) < int(shards)):
            parser.error(f"--shard {args.shard!r}: expected K/N with 0 ≤ K < N, e.g. 1/2")
        bench.train(tuple(args.datasets), int(shard), int(shards))
        return 0
    report = bench.run(tuple(args.datasets))
    stem = "cfg" if args.model == "cfg" else f"cfg-{args.model}"
    text = write_reports(
        report,
        stem,
        (args.out, args.results),
        guidance_report.markdown,
        lambda path: guidance_report.front_plot(report, path),
        figure_suffix="-front.png",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
