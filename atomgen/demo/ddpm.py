"""The demo's DDPM section: three trainings, five ways of sampling, each set of samples scored.

For each seed, three DDPMs are trained with :func:`atomgen.train.train` from one base config and the same
seed, and therefore the same initial weights, batches, noises and timesteps: plain
(``separation.method=none``), with atom separation and with Dispersive Loss (:data:`.config.MODELS`).
Each is sampled through :class:`~atomgen.pipelines.AtomDDIMPipeline` from the same initial noise, and the
plain model also with atom guidance and :class:`~atomgen.pipelines.ParticleGuidance`
(:data:`.config.METHODS`). Every set of samples is scored by the demo's :class:`.scoring.Scorer`.

:func:`run_seed` does one seed's work, :func:`summary` turns the runs into the ``report.json`` entries
(the table, mean ± std over seeds), :func:`draw` the sample grids and the diversity-fidelity plot, and
:func:`markdown` (from :mod:`.ddpm_report`) this section's part of ``report.md``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..baselines import DispersiveLoss
from ..io import write_atomic
from ..seeding import generator
from ..train.config import ExperimentConfig
from ..train.models import site_of
from . import figures
from .config import METHODS, DemoConfig, Method, batch_sizes
from .ddpm_report import TRAINING_COLUMNS, markdown
from .scoring import COLUMNS, Scorer, aggregate, quantised

logger = logging.getLogger(__name__)

__all__ = ["draw", "markdown", "method_settings", "run_seed", "sample", "summary", "train_model"]

DISPERSIVE_TAU = inspect.signature(DispersiveLoss.__init__).parameters["tau"].default
GRID_IMAGES = 64  # images in each sample grid


def method_settings(
    config: DemoConfig, experiments: dict[str, ExperimentConfig]
) -> dict[str, dict[str, Any]]:
    """What each method of the table runs with: the one home of the demo's per-method settings.

    The trained models' separation (``method``, ``λ`` as ``weight``, ``warmup_steps``, ``site`` and the
    loss's ``options``) is read from the resolved training configs that :func:`atomgen.train.train`
    receives; the sampling-time methods' ``strength`` ``γ`` from :meth:`DemoConfig.strength`, which sampling
    uses. ``config.json`` and ``report.json`` record this dict, and the report states what it says.

    Args:
        config: the demo's settings.
        experiments: the resolved training config of each model (a key of ``MODELS``) for one seed.
    """
    settings: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        experiment = experiments[method.model]
        entry: dict[str, Any] = {"model": method.model, "kind": method.kind, "strength": None}
        if method.kind == "training":
            separation = experiment.separation
            entry["separation"] = separation.method
            if separation.method != "none":
                options = dict(separation.options)
                if separation.method == "dispersive":
                    options.setdefault("tau", DISPERSIVE_TAU)
                entry.update(
                    weight=separation.weight,
                    warmup_steps=separation.warmup_steps,
                    site=site_of(separation, experiment.model),
                    options=options,
                )
        else:
            entry["strength"] = config.strength(method)
        settings[method.key] = entry
    return settings


# ---------------------------------------------------------------------------------------- the work
def run_seed(
    experiments: dict[str, ExperimentConfig],
    config: DemoConfig,
    seed: int,
    site: str,
    scorer: Scorer,
    out: Path,
    device: torch.device,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[dict[str, Any]], list[dict[str, Any]]]:
    """Train the three models of one seed, sample and score the five methods, save the samples.

    Args:
        experiments: the resolved training config of each model (a key of ``MODELS``) for ``seed``.
        config: the demo's settings (sizes, strengths).
        seed: the seed of the trainings and of the sampling streams.
        site: the separation site, where the atom model's pipeline reads its features.
        scorer: the demo's scorer (the real images' features computed once).
        out: the demo's run directory (the samples go to ``seed-<seed>/samples/``).
        device: where the models run.
        progress: draw the training, sampling and scoring bars.

    Returns:
        The trained pipelines (by model), the samples (by method), the trainings (wall time and final
        losses per model) and the runs (scores per method), the last two as ``report.json`` lists them.
    """
    pipes, trainings = {}, []
    for model, experiment in experiments.items():
        logger.info("seed %d: training %s for %d steps", seed, model, config.steps)
        pipes[model], training = train_model(experiment, site, device, progress)
        trainings.append({"seed": seed, "model": model, **training})
    seconds_of = {t["model"]: t["train_seconds"] for t in trainings}
    samples, runs = {}, []
    for method in METHODS:
        images, seconds = sample(pipes[method.model], method, config, seed, progress)
        save_samples(out / f"seed-{seed}" / "samples" / f"{method.key}.npz", images)
        scored = scorer(images, f"{method.key} (seed {seed})")
        brief = ", ".join(f"{k} {v:.4g}" for k, v in scored["metrics"].items() if v is not None)
        logger.info("seed %d, %s: %s", seed, method.key, brief)
        runs.append(
            {
                "seed": seed,
                "method": method.key,
                "train_seconds": seconds_of[method.model] if method.kind == "training" else None,
                "sample_seconds": seconds,
                **scored,
            }
        )
        samples[method.key] = images
    return pipes, samples, trainings, runs


def train_model(
    experiment: ExperimentConfig, site: str, device: torch.device, progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Train with :func:`atomgen.train.train`; the saved pipeline, and the run's wall time and losses."""
    from ..pipelines import AtomDDIMPipeline
    from ..train import train

    started = time.perf_counter()
    run_dir = train(experiment, progress=progress)
    seconds = time.perf_counter() - started
    # The exported directory does not record the site; the config does.
    pipe = AtomDDIMPipeline.from_pretrained(run_dir / "pipeline", separation_site=site).to(device)
    return pipe, {"train_seconds": seconds, "run_dir": str(run_dir), **_final_losses(run_dir)}


def _final_losses(run_dir: Path) -> dict[str, float]:
    """Means over the last 10 % of the logged steps (at least one line) of ``metrics.jsonl``.

    The training log names its losses after the method (``L_task``; ``L_atom`` or ``L_disp``, λ-free);
    the report's keys name what they are for every model.
    """
    keys = {
        "task_loss": ("L_task",),
        "separation_loss": ("L_atom", "L_disp"),
        "atom_distance": ("atom_distance",),
        "importance_entropy": ("importance_entropy",),
    }
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    tail = lines[-max(1, len(lines) // 10) :]
    final = {}
    for key, logged in keys.items():
        name = next((n for n in logged if all(n in line for line in tail)), None)
        if name is not None:
            final[f"final_{key}"] = float(np.mean([line[name] for line in tail]))
    return final


def sample(
    pipe: Any, method: Method, config: DemoConfig, seed: int, progress: bool
) -> tuple[torch.Tensor, float]:
    """``num_samples`` images in [0, 1], quantised to 8 bits, from the same noise for every method.

    Batch ``i`` draws from the stream ``(seed, "ddpm-sampling", i)`` of :func:`atomgen.seeding.generator`:
    the same initial noise for every method of a seed, independent of every other stream of the demo.
    """
    from ..pipelines import ParticleGuidance

    strength = config.strength(method)  # what method_settings records for the report
    particle = method.key == "particle-guidance"
    installed = ParticleGuidance(pipe, strength) if particle else contextlib.nullcontext()
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    started = time.perf_counter()
    with installed:
        sizes = batch_sizes(config.num_samples, config.sample_batch_size)
        for index, size in enumerate(
            tqdm(sizes, desc=f"sample {method.key}", disable=not progress, leave=False)
        ):
            out = pipe(
                batch_size=size,
                generator=generator(seed, "ddpm-sampling", index),
                num_inference_steps=config.num_inference_steps,
                atom_scale=strength if method.key == "atom-guidance" else 0.0,
                output_type="pt",
            )
            chunks.append(out.images.cpu())
    seconds = time.perf_counter() - started
    return quantised(torch.cat(chunks)), seconds


def save_samples(path: Path, images: torch.Tensor) -> None:
    """The evaluated samples as uint8 ``(N, C, H, W)`` in ``images`` of an ``.npz``, written atomically."""
    pixels = (images * 255).round().to(torch.uint8).numpy()
    write_atomic(path, lambda file: np.savez_compressed(file, images=pixels))


# -------------------------------------------------------------------------------------- report.json
def summary(
    settings: dict[str, Any],
    runs: list[dict[str, Any]],
    trainings: list[dict[str, Any]],
    scoring: dict[str, Any],
) -> dict[str, Any]:
    """This section's entries of ``report.json``: the columns, the methods, the table (mean ± std over
    seeds), the real data's reference values, the trainings and the per-seed runs.

    Args:
        settings: the report's settings; under ``methods``, each method's λ or γ as
            :func:`method_settings` recorded them for the run.
        runs: one entry per seed and method: ``metrics``, ``train_seconds``, ``sample_seconds``, ...
        trainings: one entry per seed and trained model: wall time and final losses.
        scoring: the feature extractor, LPIPS and classifier names and the real data's reference values.
    """
    from ..eval.run import DESCRIPTIONS

    table = {}
    for method in METHODS:
        rows = [run for run in runs if run["method"] == method.key]
        entry = {c.key: aggregate([row["metrics"].get(c.key) for row in rows]) for c in COLUMNS}
        for key in ("train_seconds", "sample_seconds", "eval_seconds"):
            entry[key] = aggregate([row[key] for row in rows])
        table[method.key] = entry
    training = {}
    for model in dict.fromkeys(t["model"] for t in trainings):
        rows = [t for t in trainings if t["model"] == model]
        training[model] = {key: aggregate([row.get(key) for row in rows]) for key, _, _ in TRAINING_COLUMNS}
    columns = [
        {
            "key": c.key,
            "label": c.label,
            "better": c.better,
            "aspect": c.aspect,
            "meaning": DESCRIPTIONS[c.key][0],
            "definition": DESCRIPTIONS[c.key][1],
        }
        for c in COLUMNS
    ]
    methods = [
        {
            "key": m.key,
            "label": m.label,
            "model": m.model,
            "kind": m.kind,
            "strength": settings["methods"][m.key]["strength"],
        }
        for m in METHODS
    ]
    return {
        "scoring": scoring,
        "columns": columns,
        "methods": methods,
        "table": table,
        "reference": scoring["reference"],
        "training": training,
        "runs": runs,
    }


def draw(out: Path, report: dict[str, Any], grids: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The sample grids (first seed) and the diversity-fidelity plot; their file names, relative to ``out``."""
    files: dict[str, Any] = {"samples": {}}
    for key, images in grids.items():
        files["samples"][key] = f"samples-{key}.png"
        figures.save_grid(out / files["samples"][key], images[:GRID_IMAGES])
    files["diversity_fidelity"] = "diversity-fidelity.png"
    figures.save_figure(out / files["diversity_fidelity"], figures.diversity_fidelity_plot(report))
    return files
