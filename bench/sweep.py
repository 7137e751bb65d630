"""Choose atomgen's defaults by measurement: a staged sweep on scikit-learn's digits, 3 seeds.

    python bench/sweep.py --out runs/sweep            # about 75 minutes on 2 CPU cores (2 workers)
    python bench/sweep.py --out /tmp/s --dry-run      # every code path at toy sizes, in seconds
    python bench/sweep.py --out runs/confirm-mnist5k --confirm runs/sweep/sweep.json \
        --config configs/mnist5k-ddpm.yaml            # the winners once more on mnist5k, no tuning

Every run uses the demo's sizes (:class:`atomgen.demo.DemoConfig`: 800 steps of ``configs/digits-ddpm.yaml``,
512 samples, 50 DDIM steps) and the demo's scoring (digit-classifier features, mode coverage, LPIPS
diversity). A seed fixes the initial weights, batches, noises and sampling noise, so the variants of one
seed differ only in the setting under test.

Stages (each picks its winner by :func:`choose` before the next starts):

1. training, mode × kernel: ``signed``/``repulsive`` × ``coulomb``/``gaussian`` at weight 0.1, site
   ``mid_block``; Dispersive Loss at weight 0.1 beside them.
2. training, weight: the stage-1 winner and Dispersive Loss at weights 0.03 and 0.3 (and 0.1 from stage 1).
3. training, site: the stage-2 winner at ``down_blocks.1`` (the last 4×4 encoder block).
4. sampling, strength: atom guidance and Particle Guidance on the baseline models.

The rule (:func:`choose`): a setting is *admissible* when its mean FID is at most the baseline's mean FID plus
the baseline's standard deviation over seeds, and its mean precision at least the baseline's minus its
standard deviation (no worse fidelity, within seed noise). Its *diversity gain* is the mean, over recall,
coverage, Vendi score and LPIPS diversity, of its relative change against the baseline's mean. The winner
is the admissible setting with the largest gain; if none is admissible, the one with the lowest mean FID.
(A first version ranked by the Vendi score alone; on digits it picked a signed-mode setting whose scores
equal the baseline's to three digits, since that mode stays uncharged, and the later stages would have
tuned a no-op. One metric on 3 seeds is too noisy to rank on.)

``--confirm SWEEP_JSON`` runs the baseline and the winners of a finished sweep, unchanged, on another
base config (``--config``), with the same sizes and seeds, and writes ``confirm.json`` and ``confirm.md``.

Runs are resumable: a run whose ``samples.npz`` exists is not redone. ``sweep.json`` holds every score,
``sweep.md`` the tables that results/README.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench.sweep")

METRICS = ("fid", "precision", "recall", "coverage", "vendi", "lpips_diversity", "modes_covered", "kl")
DIVERSITY = ("recall", "coverage", "vendi", "lpips_diversity")


@dataclass(frozen=True)
class Setting:
    """One row of a stage: a trained model (``model``, ``overrides``) or a sampling method on the baseline."""

    name: str
    model: str  # "baseline", "atom" or "dispersive" (atomgen.demo.MODELS)
    overrides: tuple[str, ...] = ()
    sampler: str | None = None  # "atom-guidance" or "particle-guidance" on the baseline model
    strength: float = 0.0

    @property
    def trained(self) -> bool:
        return self.sampler is None


@dataclass(frozen=True)
class Sizes:
    steps: int = 800
    num_samples: int = 512
    num_inference_steps: int = 50
    seeds: int = 3
    weights: tuple[float, ...] = (0.03, 0.3)
    # up_blocks.0 (8×8, 64 particles) would cost several minutes more per run on the CPU; not swept.
    sites: tuple[str, ...] = ("down_blocks.1",)
    atom_guidance: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)
    particle_guidance: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)
    config: str = "configs/digits-ddpm.yaml"  # the base training config

    @classmethod
    def dry_run(cls) -> Sizes:
        return cls(
            steps=4,
            num_samples=16,
            num_inference_steps=3,
            seeds=2,
            weights=(0.3,),
            sites=("up_blocks.0",),
            atom_guidance=(5.0,),
            particle_guidance=(0.2,),
        )


@dataclass
class Scores:
    setting: Setting
    values: dict[str, list[float]] = field(default_factory=dict)  # metric → one value per seed
    seconds: list[float] = field(default_factory=list)  # training (or sampling) wall time per seed

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values[metric])

    def std(self, metric: str) -> float:
        values = self.values[metric]
        return statistics.stdev(values) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------ the rule
def admissible(scores: Scores, baseline: Scores) -> bool:
    """No worse fidelity than the baseline, within the baseline's seed-to-seed spread."""
    fid_ok = scores.mean("fid") <= baseline.mean("fid") + baseline.std("fid")
    precision_ok = scores.mean("precision") >= baseline.mean("precision") - baseline.std("precision")
    return fid_ok and precision_ok


def diversity_gain(scores: Scores, baseline: Scores) -> float:
    """Mean relative change of the diversity metrics against the baseline (0.01 = 1 % more diverse)."""
    return statistics.fmean(scores.mean(m) / baseline.mean(m) - 1 for m in DIVERSITY)


def choose(candidates: Sequence[Scores], baseline: Scores) -> Scores:
    """The admissible candidate with the largest diversity gain; else the one with the best fidelity."""
    passing = [c for c in candidates if admissible(c, baseline)]
    if passing:
        return max(passing, key=lambda c: diversity_gain(c, baseline))
    return min(candidates, key=lambda c: c.mean("fid"))


# ------------------------------------------------------------------------------------------ the runs
def _run_dir(out: Path, setting: Setting, seed: int) -> Path:
    return out / "runs" / setting.name / f"seed-{seed}"


def _demo_config(sizes: Sizes, seed: int, setting: Setting):
    from atomgen.demo import DemoConfig

    strengths = {"atom_guidance": 0.0, "particle_guidance": 0.0}
    if setting.sampler is not None:
        strengths[setting.sampler.replace("-", "_")] = setting.strength
    return DemoConfig(
        config=sizes.config,
        steps=sizes.steps,
        num_samples=sizes.num_samples,
        num_inference_steps=sizes.num_inference_steps,
        seed=seed,
        overrides=setting.overrides,
        **strengths,
    )


def _work(job: tuple[Path, Sizes, Setting, int]) -> tuple[str, int, float]:
    """Train (or load the baseline) and sample one setting at one seed; runs in a worker process."""
    import torch

    from atomgen.demo.config import METHODS
    from atomgen.demo.ddpm import sample, save_samples, train_model
    from atomgen.pipelines import AtomDDIMPipeline
    from atomgen.train.models import site_of

    out, sizes, setting, seed = job
    torch.set_num_threads(1)
    run = _run_dir(out, setting, seed)
    config = _demo_config(sizes, seed, setting)
    if setting.trained:
        experiment = config.experiment(setting.model, seed, run)
        site = site_of(experiment.separation, experiment.model)
        pipe, training = train_model(experiment, site, torch.device("cpu"))
        seconds = training["train_seconds"]
        method = next(m for m in METHODS if m.model == setting.model and m.kind == "training")
    else:
        baseline = _run_dir(out, Setting("baseline", "baseline"), seed) / f"seed-{seed}" / "baseline"
        pipe = AtomDDIMPipeline.from_pretrained(baseline / "pipeline")
        method = next(m for m in METHODS if m.key == setting.sampler)
    images, sample_seconds = sample(pipe, method, config, seed, progress=False)
    save_samples(run / "samples.npz", images)
    return setting.name, seed, seconds if setting.trained else sample_seconds


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.WARNING)


def run_stage(out: Path, sizes: Sizes, settings: Iterable[Setting], workers: int) -> None:
    """Every (setting, seed) of a stage whose samples are missing, ``workers`` at a time."""
    jobs = [
        (out, sizes, s, seed)
        for s in settings
        for seed in range(sizes.seeds)
        if not (_run_dir(out, s, seed) / "samples.npz").exists()
    ]
    if not jobs:
        return
    logger.info("%d runs: %s", len(jobs), sorted({j[2].name for j in jobs}))
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        for name, seed, seconds in pool.map(_work, jobs):
            _record_time(out / "timings.json", f"{name}/seed-{seed}", seconds)
            logger.info("done %s seed %d (%.0f s)", name, seed, seconds)


def _record_time(path: Path, key: str, seconds: float) -> None:
    """Add one run's seconds to ``timings.json``, re-read first: several sweeps may share a folder."""
    from atomgen.io import write_json

    timings = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**timings, key: seconds})


class Scorer:
    """The demo's scorer, once per sweep; scores are cached in ``scores.json`` by run."""

    def __init__(self, out: Path, sizes: Sizes):
        from atomgen.demo.config import DemoConfig
        from atomgen.demo.scoring import Scorer

        config = DemoConfig(config=sizes.config)
        experiment = config.experiment("baseline", 0, out)
        self.scorer = Scorer(experiment.data.load(), config, out / "cache", _cpu(), False)
        self.out, self.sizes = out, sizes
        self.path = out / "scores.json"
        self.cache: dict[str, dict[str, float]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )

    def __call__(self, setting: Setting) -> Scores:
        import torch

        from atomgen.io import write_json

        timings = json.loads((self.out / "timings.json").read_text())
        scores = Scores(setting)
        for seed in range(self.sizes.seeds):
            key = f"{setting.name}/seed-{seed}"
            if key not in self.cache:
                with np.load(_run_dir(self.out, setting, seed) / "samples.npz") as file:
                    images = torch.from_numpy(file["images"]).float() / 255
                self.cache[key] = self.scorer(images, key)["metrics"]
                write_json(self.path, self.cache)
            for metric in METRICS:
                value = self.cache[key][metric]
                scores.values.setdefault(metric, []).append(float("inf") if value is None else value)
            scores.seconds.append(timings[key])
        return scores


def _cpu():
    import torch

    return torch.device("cpu")


# ------------------------------------------------------------------------------------------ the sweep
def sweep(out: Path, sizes: Sizes, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    baseline = Setting("baseline", "baseline")
    # Every setting spells out what it tests, so that changing a library default later leaves it alone.
    stage1 = [baseline, Setting("dispersive-w0.1", "dispersive", ("separation.weight=0.1",))]
    stage1 += [
        Setting(
            f"atom-{mode}-{kernel}-w0.1",
            "atom",
            (
                f"separation.options.mode={mode}",
                f"separation.options.kernel={kernel}",
                "separation.weight=0.1",
                "separation.site=mid_block",
            ),
        )
        for mode in ("signed", "repulsive")
        for kernel in ("coulomb", "gaussian")
    ]
    run_stage(out, sizes, stage1, workers)
    score = Scorer(out, sizes)
    base = score(baseline)
    results = {"stage 1: mode × kernel": [score(s) for s in stage1[1:]]}
    atom1 = choose([s for s in results["stage 1: mode × kernel"] if s.setting.model == "atom"], base)

    def reweighted(setting: Setting, weight: float) -> Setting:
        stem = setting.name.rsplit("-w", 1)[0]
        kept = tuple(o for o in setting.overrides if not o.startswith("separation.weight="))
        return Setting(f"{stem}-w{weight:g}", setting.model, (*kept, f"separation.weight={weight}"))

    dispersive = stage1[1]
    stage2 = [reweighted(s, w) for s in (atom1.setting, dispersive) for w in sizes.weights]
    run_stage(out, sizes, stage2, workers)
    results["stage 2: weight"] = [score(s) for s in stage2]
    atom_weights = [atom1] + [s for s in results["stage 2: weight"] if s.setting.model == "atom"]
    atom2 = choose(atom_weights, base)

    stage3 = [
        Setting(
            f"{atom2.setting.name}-{site}",
            "atom",
            (
                *(o for o in atom2.setting.overrides if not o.startswith("separation.site=")),
                f"separation.site={site}",
            ),
        )
        for site in sizes.sites
    ]
    run_stage(out, sizes, stage3, workers)
    results["stage 3: site"] = [score(s) for s in stage3]
    atom3 = choose([atom2, *results["stage 3: site"]], base)

    stage4 = [
        Setting(f"atom-guidance-{g:g}", "baseline", (), "atom-guidance", g) for g in sizes.atom_guidance
    ]
    stage4 += [
        Setting(f"particle-guidance-{g:g}", "baseline", (), "particle-guidance", g)
        for g in sizes.particle_guidance
    ]
    run_stage(out, sizes, stage4, workers)
    results["stage 4: guidance strength"] = [score(s) for s in stage4]
    guidance = results["stage 4: guidance strength"]
    dispersive_all = [s for stage in results.values() for s in stage if s.setting.model == "dispersive"]
    winners = {
        "atom separation (training)": atom3,
        "dispersive loss (training)": choose(dispersive_all, base),
        "atom guidance (sampling)": choose(
            [s for s in guidance if s.setting.sampler == "atom-guidance"], base
        ),
        "particle guidance (sampling)": choose(
            [s for s in guidance if s.setting.sampler == "particle-guidance"], base
        ),
    }
    report = {
        **_header(sizes, workers, started),
        "baseline": _row(base, base),
        "stages": {stage: [_row(s, base) for s in rows] for stage, rows in results.items()},
        "winners": {label: _row(s, base) for label, s in winners.items()},
    }
    _write(out / "sweep", report)
    return report


def confirm(out: Path, sizes: Sizes, workers: int, sweep_json: Path) -> dict[str, Any]:
    """The baseline and a finished sweep's winners, unchanged, on ``sizes.config``."""
    started = time.perf_counter()
    winners = json.loads(sweep_json.read_text())["winners"]
    settings = {
        label: Setting(**{**row["setting"], "overrides": tuple(row["setting"]["overrides"])})
        for label, row in winners.items()
    }
    baseline = Setting("baseline", "baseline")
    run_stage(out, sizes, [baseline, *(s for s in settings.values() if s.trained)], workers)
    run_stage(out, sizes, [s for s in settings.values() if not s.trained], workers)
    score = Scorer(out, sizes)
    base = score(baseline)
    report = {
        **_header(sizes, workers, started),
        "sweep": str(sweep_json),
        "baseline": _row(base, base),
        "stages": {},
        "winners": {label: _row(score(s), base) for label, s in settings.items()},
    }
    _write(out / "confirm", report)
    return report


def _header(sizes: Sizes, workers: int, started: float) -> dict[str, Any]:
    return {
        "sizes": dataclasses.asdict(sizes),
        "rule": __doc__.split("The rule")[1].split("``--confirm")[0].strip(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "workers": workers,
        "wall_seconds": time.perf_counter() - started,
    }


def _write(stem: Path, report: dict[str, Any]) -> None:
    from atomgen.io import write_json, write_text

    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))


def _row(scores: Scores, baseline: Scores) -> dict[str, Any]:
    return {
        "name": scores.setting.name,
        "setting": dataclasses.asdict(scores.setting),
        "admissible": admissible(scores, baseline),
        "diversity_gain": diversity_gain(scores, baseline),
        "mean": {m: scores.mean(m) for m in METRICS},
        "std": {m: scores.std(m) for m in METRICS},
        "values": scores.values,
        "seconds": statistics.fmean(scores.seconds),
    }


# ------------------------------------------------------------------------------------------ the report
_HEADERS = {
    "fid": "FID ↓",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "coverage": "coverage ↑",
    "vendi": "Vendi ↑",
    "lpips_diversity": "LPIPS div. ↑",
    "modes_covered": "modes ↑",
    "kl": "class KL ↓",
}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| setting | " + " | ".join(_HEADERS[m] for m in METRICS) + " | admissible | gain | s / seed |",
        "|---|" + "---:|" * len(METRICS) + ":-:|---:|---:|",
    ]
    for row in rows:
        cells = [f"{row['mean'][m]:.3g} ± {row['std'][m]:.2g}" for m in METRICS]
        mark = "yes" if row["admissible"] else "no"
        gain = f"{100 * row['diversity_gain']:+.2f} %"
        lines.append(
            f"| {row['name']} | " + " | ".join(cells) + f" | {mark} | {gain} | {row['seconds']:.0f} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    title = f"Confirmation of {report['sweep']}" if "sweep" in report else "Default sweep"
    lines = [
        f"# {title} on `{sizes['config']}`",
        "",
        f"{sizes['seeds']} seeds; each model {sizes['steps']} training steps; {sizes['num_samples']} samples, "
        f"{sizes['num_inference_steps']} DDIM steps; digit-classifier features. Mean ± std over seeds. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} logical CPUs, "
        f"{report['workers']} single-thread workers; {report['wall_seconds'] / 60:.0f} min for this "
        "invocation (runs already done are not redone).",
        "",
        f"Rule: {report['rule']}",
        "",
    ]
    for stage, rows in report["stages"].items():
        lines += [f"## {stage.capitalize()}", "", *_table([report["baseline"], *rows]), ""]
    lines += ["## Winners", "", *_table([report["baseline"], *report["winners"].values()]), ""]
    lines += [f"- {label}: `{row['name']}`" for label, row in report["winners"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="results folder (resumable)")
    parser.add_argument("--workers", type=int, default=2, help="single-thread worker processes")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes: checks the code paths")
    parser.add_argument("--confirm", type=Path, metavar="SWEEP_JSON", help="run a sweep's winners again")
    parser.add_argument("--config", default=Sizes.config, help="base training config (YAML)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sizes = dataclasses.replace(Sizes.dry_run() if args.dry_run else Sizes(), config=args.config)
    if args.confirm:
        report = confirm(args.out, sizes, args.workers, args.confirm)
    else:
        report = sweep(args.out, sizes, args.workers)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
