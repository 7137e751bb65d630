"""``atomgen demo``: the main job end to end, built from the library's own pieces.

:func:`run_demo` runs the sections in order and joins their parts of the report:

- :mod:`.ddpm`, for each seed: three DDPMs trained with :func:`atomgen.train.train` from one base config
  (``configs/digits-ddpm.yaml``) and the same seed, plain, with atom separation and with Dispersive Loss,
  each sampled through :class:`~atomgen.pipelines.AtomDDIMPipeline` from the same initial noise, and the
  plain model also with atom guidance and :class:`~atomgen.pipelines.ParticleGuidance`; every set of
  samples scored by :mod:`atomgen.eval`;
- :mod:`.attribution`, for each seed: the atom model's learned importances against the standard saliency
  baselines at the same site (:func:`atomgen.eval.compare_attributions`: deletion and insertion curves);
- :mod:`.cfg` (first seed, unless ``cfg=False``): a class-conditional model, plain CFG over a grid of
  ``w`` against atom and feature guidance;
- :mod:`.vae` (first seed, unless ``vae=False``): a plain VAE and one with atom separation at the
  encoder, trained on all but ``vae_held_out`` images and measured on those.

The run directory receives:

    config.json               the demo settings, the resolved training configs and each method's settings
                              (:func:`.ddpm.method_settings`), before any work
    report.md, report.json    every section's table (mean ± std over seeds), the machine, the versions
    samples-<method>.png      a sample grid per method (first seed)
    attribution.png           the atom model's samples, its learned importance maps and the best
                              baseline's maps, in pixel space (first seed)
    attribution-curves.png    deletion and insertion curves: learned importances, the best baseline and
                              random orders (all seeds)
    diversity-fidelity.png    diversity against fidelity, one point per method
    cfg-front.png             the CFG section: recall against precision of a class-conditional model
                              under plain CFG over a grid of ``w`` and under atom and feature guidance
    vae.png                   the VAE section: held-out images and their reconstructions, and prior
                              samples, of both VAEs
    seed-<S>/<model>/         each training run (config.yaml, metrics.jsonl, checkpoints/, pipeline/)
    seed-<S>/cfg/             the CFG section's class-conditional run (first seed only)
    seed-<S>/vae-baseline/, seed-<S>/vae-atom/   the VAE section's runs (first seed only; vae/)
    seed-<S>/samples/<method>.npz   the evaluated samples (uint8): ``atomgen eval --fake`` reads them
    cache/                    feature cache of the real images

Every random stream of the demo (initial and step noise, prior draws, the attribution probe's noise and
random orders) is drawn from :func:`atomgen.seeding.generator` by seed, purpose and batch, so no two
streams collide at any seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..io import write_json
from ..train.models import site_of
from . import attribution, cfg, ddpm, report, vae
from .config import DEFAULT_CONFIG, LIBRARY_MODE, METHODS, MODELS, DemoConfig, Method
from .ddpm import method_settings
from .scoring import Scorer

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONFIG", "METHODS", "MODELS", "DemoConfig", "Method", "method_settings", "run_demo"]

# The sections' parts of report.md, in order.
RENDERERS = (ddpm.markdown, attribution.markdown, cfg.markdown, vae.markdown)
# The names bench/sweep.py imports from here (the sections hold them).


def run_demo(
    out_dir: str | os.PathLike[str],
    config: DemoConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train, sample and score every section; write the report, the figures and the runs.

    Args:
        out_dir: run directory (created if missing); see the module docstring for what it receives.
        config: the demo's settings; ``None`` for :class:`DemoConfig`'s defaults.
        progress: draw progress bars (training, sampling, scoring, loading pipelines); ``False`` draws
            none.
        **overrides: any :class:`DemoConfig` field, applied on top of ``config``.

    Returns:
        The report, as written to ``report.json``.

    Raises:
        atomgen.train.config.ConfigError: an override that the training config refuses.
        FileNotFoundError: the base config does not exist.

    Example:
        >>> from atomgen.demo import run_demo
        >>> report = run_demo("runs/demo", seeds=3, mode="repulsive")  # doctest: +SKIP
        >>> report["table"]["atom"]["vendi"]  # doctest: +SKIP
    """
    from ..eval.features import default_device

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DemoConfig)})
    if unknown:
        raise TypeError(f"run_demo got unknown settings {unknown}; DemoConfig fields are allowed")
    config = dataclasses.replace(config or DemoConfig(), **overrides)
    out = Path(out_dir)
    # Every training config is resolved (and validated) before any work starts, and written first.
    experiments = {
        seed: {model: config.experiment(model, seed, out) for model in MODELS} for seed in config.seed_list
    }
    first = experiments[config.seed]
    conditional = cfg.experiment(config, out) if config.cfg else None
    autoencoders = vae.experiments(config, out, first["baseline"].data) if config.vae else {}
    methods = method_settings(config, first)
    training = {m: c.to_dict() for m, c in first.items()}
    if conditional is not None:
        training[cfg.MODEL] = conditional.to_dict()
    training.update({m: c.to_dict() for m, c in autoencoders.items()})
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "config.json", {"demo": dataclasses.asdict(config), "training": training, "methods": methods}
    )
    started = time.perf_counter()
    load = _load_average()
    timings: dict[str, dict[str, float]] = {}  # seconds per section: the 10-minute budget is kept by these
    device = default_device()
    site = site_of(first["atom"].separation, first["atom"].model)

    trainings: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    attributions: list[dict[str, Any]] = []
    grids: dict[str, torch.Tensor] = {}  # the first seed's samples and attribution probe, for the figures
    picture: dict[str, Any] = {}
    guided, autoencoded, vae_pictures = None, None, {}
    with _diffusers_bars(progress):
        with _timed(timings, "setup"):  # the real images' features and LPIPS diversity, once
            data = first["baseline"].data.load()
            scorer = Scorer(data, config, out / "cache", device, progress)
        for seed in config.seed_list:
            with _timed(timings, "ddpm"):
                pipes, samples, trained, scored = ddpm.run_seed(
                    experiments[seed], config, seed, site, scorer, out, device, progress
                )
            trainings += trained
            runs += scored
            with _timed(timings, "attribution"):
                measured, probe = attribution.measure(pipes["atom"], site, samples["atom"], seed)
            attributions.append({"seed": seed, **measured})
            if seed == config.seed:
                grids, picture = samples, probe
            mode = pipes["atom"].separation.config.mode
            del pipes, samples
        if conditional is not None:
            with _timed(timings, "cfg"):
                guided = cfg.run_cfg(conditional, config, out / "cache", device, progress)
        if autoencoders:
            with _timed(timings, "vae"):
                autoencoded, vae_pictures = vae.run_vae(autoencoders, config, scorer, device, progress)

    settings = {
        "demo": dataclasses.asdict(config),
        "atom_mode": mode,
        "atom_mode_source": _mode_source(config, first["atom"].separation.options),
        "library_default_mode": LIBRARY_MODE,
        "atom_options": first["atom"].separation.options,
        "site": site,
        "methods": methods,
        "dataset": {"name": data.name, "images": len(data), "image_shape": list(data.image_shape)},
        "model": dataclasses.asdict(first["baseline"].model),
        "train": dataclasses.asdict(first["baseline"].train),
        "device": str(device),
    }
    with _timed(timings, "report"):
        parts = [
            ddpm.summary(settings, runs, trainings, scorer.description),
            {"attribution": attribution.summary(attributions)},
        ]
        parts += [{"cfg": guided}] if guided is not None else []
        parts += [{"vae": autoencoded}] if autoencoded is not None else []
        result = report.build(seeds=config.seed_list, settings=settings, parts=parts)
        files = {**ddpm.draw(out, result, grids), **attribution.draw(out, result["attribution"], picture)}
        if guided is not None:
            files.update(cfg.draw(out, guided))
        if autoencoded is not None:
            files.update(vae.draw(out, vae_pictures))
        result["figures"] = files
    result["timings"] = timings
    result["load_average"] = {"start": load, "end": _load_average()}
    result["wall_seconds"] = time.perf_counter() - started
    report.write(out, result, RENDERERS)
    logger.info(
        "demo finished in %.0f s (%s): %s",
        result["wall_seconds"],
        ", ".join(f"{key} {spent['wall']:.0f} s" for key, spent in timings.items()),
        out / "report.md",
    )
    return result


@contextlib.contextmanager
def _timed(timings: dict[str, dict[str, float]], section: str) -> Iterator[None]:
    """Add the block's wall and CPU seconds to ``timings[section]`` and log them.

    The CPU time of this process is what the section costs on an idle machine with one thread; the wall
    time also counts the waits for other processes on a shared one.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        spent = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        total = timings.setdefault(section, {"wall": 0.0, "cpu": 0.0})
        for key, seconds in spent.items():
            total[key] += seconds
        logger.info("%s took %.1f s (CPU %.1f s)", section, spent["wall"], spent["cpu"])


@contextlib.contextmanager
def _diffusers_bars(progress: bool) -> Iterator[None]:
    """Without ``progress``, hide diffusers' own bars ("Loading pipeline components") for the block, then
    restore diffusers' setting: the demo loads a pipeline after every training."""
    from diffusers.utils import logging as diffusers_logging

    was_enabled = diffusers_logging.is_progress_bar_enabled()
    if not progress:
        diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def _mode_source(config: DemoConfig, options: dict[str, Any]) -> str:
    """Where the atom model's mode came from: ``--mode``, an override, or the library default."""
    if config.mode is not None:
        return "--mode"
    return "--set separation.options.mode" if "mode" in options else "library default"


def _load_average() -> float | None:
    """The 1-minute load average (``None`` where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
