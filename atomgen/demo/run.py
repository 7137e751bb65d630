"""``atomgen demo``: the main job end to end, built from the library's own pieces.

For each seed: three DDPMs are trained on the digits with :func:`atomgen.train.train` from one base config
(``configs/digits-ddpm.yaml``), the same seed and therefore the same initial weights, batches, noises and
timesteps — plain (``separation.method=none``), with atom separation and with Dispersive Loss. Each is
sampled through :class:`~atomgen.pipelines.AtomDDIMPipeline` from the same initial noise, and the plain
model is also sampled with the two sampling-time methods, atom guidance and
:class:`~atomgen.pipelines.ParticleGuidance`. Every set of samples is scored by :mod:`atomgen.eval`, the
atom model's learned importances are set against the standard saliency baselines at the same site
(:func:`atomgen.eval.compare_attributions`: deletion and insertion curves). Then, unless ``cfg=False``,
the classifier-free-guidance section (:mod:`.cfg`, first seed) trains a class-conditional model from the
same base config and compares plain CFG over a grid of ``w`` with atom and feature guidance; and unless
``vae=False``, the VAE section (:mod:`.vae`, first seed) trains a plain VAE and one with atom separation
at the encoder on all but ``vae_held_out`` images and measures both on those. The run directory receives:

    config.json               the demo settings, the resolved training configs and each method's settings
                              (:func:`method_settings`), before any work
    report.md, report.json    the table (mean ± std over seeds), the machine, the versions
    samples-<method>.png      a sample grid per method (first seed)
    attribution.png           the atom model's samples, its learned importance maps and the best
                              baseline's maps, in pixel space (first seed)
    attribution-curves.png    deletion and insertion curves: learned importances, the best baseline and
                              random orders (all seeds)
    diversity-fidelity.png    diversity against fidelity, one point per method
    cfg-front.png             the CFG section (:mod:`.cfg`, skipped with ``cfg=False``): recall against
                              precision of a class-conditional model under plain CFG over a grid of ``w``
                              and under atom and feature guidance; its table is in the report
    vae.png                   the VAE section (:mod:`.vae`, skipped with ``vae=False``): held-out images
                              and their reconstructions, and prior samples, of both VAEs
    seed-<S>/<model>/         each training run (config.yaml, metrics.jsonl, checkpoints/, pipeline/)
    seed-<S>/cfg/             the CFG section's class-conditional run (first seed only)
    seed-<S>/vae-baseline/, seed-<S>/vae-atom/   the VAE section's runs (first seed only; vae/)
    seed-<S>/samples/<method>.npz   the evaluated samples (uint8): ``atomgen eval --fake`` reads them
    cache/                    feature cache of the real images
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..baselines import DispersiveLoss
from ..hooks import attach
from ..io import write_atomic, write_json, write_text
from ..separation import MODES, AtomSeparation
from ..train.config import ExperimentConfig, apply_overrides, config_path
from ..train.models import site_of

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONFIG", "METHODS", "MODELS", "DemoConfig", "Method", "method_settings", "run_demo"]

DEFAULT_CONFIG = "configs/digits-ddpm.yaml"  # the checkout's file from its root, else the packaged copy
LIBRARY_MODE = inspect.signature(AtomSeparation.__init__).parameters["mode"].default
DISPERSIVE_TAU = inspect.signature(DispersiveLoss.__init__).parameters["tau"].default

# The trained models: name → separation.method.
MODELS = {"baseline": "none", "atom": "atom", "dispersive": "dispersive"}


@dataclass(frozen=True)
class Method:
    """One row of the table: which trained model is sampled, and how."""

    key: str  # file names, report.json
    label: str  # the table
    model: str  # a key of MODELS
    kind: str  # "training" or "sampling"


METHODS = (
    Method("baseline", "baseline", "baseline", "training"),
    Method("atom", "atom (training)", "atom", "training"),
    Method("dispersive", "dispersive (training)", "dispersive", "training"),
    Method("atom-guidance", "atom guidance (sampling)", "baseline", "sampling"),
    Method("particle-guidance", "particle guidance (sampling)", "baseline", "sampling"),
)

PROBE_FRACTION = 0.05  # samples are re-noised to t = 5 % of the trajectory to read the site's features
ATTRIBUTION_IMAGES = 12  # images in the attribution picture (one column each)
GRID_IMAGES = 64  # images in each sample grid
DELETION_ATOMS = 256  # atoms (samples) in the deletion and insertion curves
# The learned importance first, then the baselines it is measured against (random orders are the
# reference of every curve).
ATTRIBUTIONS = ("importance", "feature_norm", "gradient_x_activation", "integrated_gradients")


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DemoConfig:
    """What the demo does; the defaults take about 10 minutes on 2 CPU cores (measured with one thread):
    about 8 for the five methods and the attribution, about 2 for the CFG section and 1 for the VAEs.

    Args:
        steps: training steps of each model (``train.steps``).
        num_samples: images sampled per method and seed.
        num_inference_steps: DDIM steps at sampling time.
        sample_batch_size: images per sampling batch; the guidance methods separate the samples *within*
            a batch, so this is their batch of atoms.
        seeds: how many seeds to repeat everything with (the table reports mean ± std over them).
        seed: the first seed; the others follow it.
        mode: the atom model's (and the atom VAE's) pair weights (method.md §4), ``"repulsive"`` or
            ``"signed"``; ``None`` keeps the library default (``"repulsive"``).
        atom_guidance: ``γ`` of atom guidance on the baseline model (:func:`~atomgen.pipelines.guide`).
        particle_guidance: ``γ`` of Particle Guidance on the baseline model.
        inception: score with FID Inception-v3 features instead of the digit classifier's.
        config: the base training config (YAML).
        overrides: ``key=value`` overrides of the base config, applied to all three trainings (and the
            CFG section's), except ``separation.options.*``: those are ``AtomSeparation`` keyword
            arguments, for the atom model. The VAE section trains from its own config
            (:data:`atomgen.demo.vae.BASE_CONFIG`, as it is) on the base config's data.
        cfg: run the classifier-free-guidance section (:mod:`atomgen.demo.cfg`, first seed only).
        cfg_steps: training steps of its class-conditional model.
        cfg_samples_per_class: images sampled per class and setting (the scores are per class, with 5
            neighbours).
        cfg_inference_steps: its DDIM steps.
        vae: run the VAE section (:mod:`atomgen.demo.vae`, first seed only).
        vae_steps: training steps of each of its two VAEs.
        vae_held_out: images of the dataset the VAEs do not train on; reconstruction error, KL and
            active units are measured on them.
        vae_samples: prior samples scored per VAE.
    """

    steps: int = 800
    num_samples: int = 512
    num_inference_steps: int = 50
    sample_batch_size: int = 128
    seeds: int = 1
    seed: int = 0
    mode: str | None = None
    # The strengths that won the digits sweep (bench/sweep.py): the most diversity at no worse fidelity,
    # or for Particle Guidance, which lost fidelity at every strength, the least loss.
    atom_guidance: float = 2.0
    particle_guidance: float = 0.1
    inception: bool = False
    config: str = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()
    cfg: bool = True
    cfg_steps: int = 500
    cfg_samples_per_class: int = 40
    cfg_inference_steps: int = 15
    vae: bool = True
    vae_steps: int = 200
    vae_held_out: int = 300
    vae_samples: int = 512

    def __post_init__(self) -> None:
        positive = ("steps", "num_inference_steps", "sample_batch_size", "seeds", "cfg_steps")
        positive += ("cfg_inference_steps", "vae_steps")
        counts = {  # name: (the least value, why)
            **dict.fromkeys(positive, (1, "")),
            **dict.fromkeys(("num_samples", "vae_samples"), (8, "precision and recall use 5 neighbours")),
            "cfg_samples_per_class": (6, "precision and recall within a class use 5 neighbours"),
            "vae_held_out": (2, "active units are a variance over the held-out images"),
        }
        for name, (least, why) in counts.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                wanted = "a positive integer" if least == 1 else f"an integer of at least {least} ({why})"
                raise ValueError(f"{name} must be {wanted}, got {value!r}")
        for name in ("cfg", "vae"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.sample_batch_size < 2:
            raise ValueError("sample_batch_size must be at least 2: guidance separates samples of a batch")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(
                f"mode must be one of {MODES} (or None for the library default), got {self.mode!r}"
            )
        for name in ("atom_guidance", "particle_guidance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A smoke-test size, about 3 minutes on 2 CPU cores, about 40 s of it the CFG section and 30 s the
        VAE section (the samples are blurry digits at best)."""
        sizes = {
            "steps": 150,
            "num_samples": 256,
            "num_inference_steps": 20,
            "cfg_steps": 150,
            "cfg_samples_per_class": 20,
            "cfg_inference_steps": 10,
            "vae_steps": 100,
            "vae_samples": 256,
        }
        return cls(**{**sizes, **overrides})

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def strength(self, method: Method) -> float | None:
        """The guidance strength a sampling-time method uses (``None`` for the trained models)."""
        return {"atom-guidance": self.atom_guidance, "particle-guidance": self.particle_guidance}.get(
            method.key
        )

    def experiment(
        self,
        model: str,
        seed: int,
        out: Path,
        *,
        steps: int | None = None,
        extra: Sequence[str] = (),
        base: str | None = None,
    ) -> ExperimentConfig:
        """The resolved training config of one model and seed (raises ``ConfigError`` for a bad one).

        Args:
            model: a key of :data:`MODELS`, or the name of another run (plain, unless ``extra`` says
                otherwise); the run's directory is ``<out>/seed-<seed>/<model>``.
            seed: ``train.seed``.
            out: the demo's run directory.
            steps: ``train.steps``; ``None`` for :attr:`steps`.
            extra: overrides applied last (the CFG section's class-conditional model).
            base: another base config, used without :attr:`overrides` (they are for :attr:`config`):
                the VAE section's.
        """
        values = yaml.safe_load(config_path(base or self.config).read_text()) or {}
        if base is None:
            values = apply_overrides(values, self.overrides)
        steps = self.steps if steps is None else steps
        warmup = values.get("train", {}).get("lr_warmup_steps", 100)
        demo = [
            f"separation.method={MODELS.get(model, 'none')}",
            f"train.steps={steps}",
            f"train.seed={seed}",
            f"train.output_dir={out / f'seed-{seed}' / model}",
            f"train.lr_warmup_steps={min(warmup, steps // 10)}",  # a short run keeps its warm-up short
            f"train.checkpoint_every={steps}",  # one checkpoint, at the end
            "train.keep_checkpoints=1",
            *extra,
        ]
        if model == "atom" and self.mode is not None:
            demo.append(f"separation.options.mode={self.mode}")
        if model != "atom":  # options of AtomSeparation mean nothing to the other models
            values.get("separation", {}).pop("options", None)
        return ExperimentConfig.from_dict(apply_overrides(values, demo))


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
        experiments: the resolved training config of each model (a key of :data:`MODELS`) for one seed.
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


# ------------------------------------------------------------------------------------------ the demo
def run_demo(
    out_dir: str | os.PathLike[str],
    config: DemoConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train, sample and score the five methods; write the report, the figures and the runs.

    Args:
        out_dir: run directory (created if missing); see the module docstring for what it receives.
        config: the demo's settings; ``None`` for :class:`DemoConfig`'s defaults.
        progress: show progress bars for sampling and scoring (training always shows its own).
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
    from . import cfg, figures, report, vae

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
    with _timed(timings, "setup"):  # the real images' features and LPIPS diversity, once
        data = first["baseline"].data.load()
        scorer = _Scorer(data, config, out / "cache", device, progress)

    trainings: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    attributions: list[dict[str, Any]] = []
    grids: dict[str, torch.Tensor] = {}
    picture: dict[str, Any] = {}
    for seed in config.seed_list:
        pipes = {}
        with _timed(timings, "ddpm"):
            for model, experiment in experiments[seed].items():
                logger.info("seed %d: training %s for %d steps", seed, model, config.steps)
                pipes[model], training = _train(experiment, site, device)
                trainings.append({"seed": seed, "model": model, **training})
            seconds_of = {t["model"]: t["train_seconds"] for t in trainings if t["seed"] == seed}
            samples = {}
            for method in METHODS:
                images, seconds = _sample(pipes[method.model], method, config, seed, progress)
                _save_samples(out / f"seed-{seed}" / "samples" / f"{method.key}.npz", images)
                scored = scorer(images, f"{method.key} (seed {seed})")
                logger.info("seed %d, %s: %s", seed, method.key, _brief(scored["metrics"]))
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
        with _timed(timings, "attribution"):
            measured, probe = _attribution(pipes["atom"], site, samples["atom"], seed)
        attributions.append({"seed": seed, **measured})
        if seed == config.seed:
            grids = {key: images[:GRID_IMAGES] for key, images in samples.items()}
            picture = probe
        mode = pipes["atom"].separation.config.mode
        del pipes, samples
    guided = None
    if conditional is not None:
        with _timed(timings, "cfg"):
            guided = cfg.run_cfg(conditional, config, out / "cache", device, progress)
    autoencoded, vae_pictures = None, {}
    if autoencoders:
        with _timed(timings, "vae"):
            autoencoded, vae_pictures = vae.run_vae(autoencoders, config, scorer, device)

    settings = {
        "demo": dataclasses.asdict(config),
        "atom_mode": mode,
        "atom_mode_source": _mode_source(config, first["atom"]),
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
        result = report.build(
            settings=settings,
            methods=METHODS,
            runs=runs,
            trainings=trainings,
            attributions=attributions,
            scoring=scorer.description,
        )
        if guided is not None:
            result["cfg"] = guided
        if autoencoded is not None:
            result["vae"] = autoencoded
        # The maps of the best baseline (chosen over all seeds) on the first seed's samples.
        maps = _attribution_maps(picture, result["attribution"]["best_baseline"], config.seed)
        result["figures"] = figures.write_figures(out, result, grids, maps, vae_pictures)
    result["timings"] = timings
    result["load_average"] = {"start": load, "end": _load_average()}
    result["wall_seconds"] = time.perf_counter() - started
    write_json(out / "report.json", result)
    write_text(out / "report.md", report.markdown(result))
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


# ---------------------------------------------------------------------------------- the three steps
def _train(experiment: ExperimentConfig, site: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """Train with :func:`atomgen.train.train`; the saved pipeline, and the run's wall time and losses."""
    from ..pipelines import AtomDDIMPipeline
    from ..train import train

    started = time.perf_counter()
    run_dir = train(experiment)
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


def _batch_sizes(total: int, batch: int) -> list[int]:
    """``total`` split into near-equal batches of at most ``batch`` (never a batch of one to guide)."""
    count = math.ceil(total / batch)
    return [total // count + (i < total % count) for i in range(count)]


def _sample(
    pipe: Any, method: Method, config: DemoConfig, seed: int, progress: bool
) -> tuple[torch.Tensor, float]:
    """``num_samples`` images in [0, 1], quantised to 8 bits, from the same noise for every method."""
    from ..pipelines import ParticleGuidance

    strength = config.strength(method)  # what method_settings records for the report
    particle = method.key == "particle-guidance"
    installed = ParticleGuidance(pipe, strength) if particle else contextlib.nullcontext()
    pipe.set_progress_bar_config(disable=True)
    chunks = []
    started = time.perf_counter()
    with installed:
        sizes = _batch_sizes(config.num_samples, config.sample_batch_size)
        for index, size in enumerate(
            tqdm(sizes, desc=f"sample {method.key}", disable=not progress, leave=False)
        ):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            out = pipe(
                batch_size=size,
                generator=generator,
                num_inference_steps=config.num_inference_steps,
                guidance_strength=strength if method.key == "atom-guidance" else 0.0,
                output_type="pt",
            )
            chunks.append(out.images.cpu())
    seconds = time.perf_counter() - started
    images = torch.cat(chunks)
    return (images * 255).round() / 255, seconds


def _save_samples(path: Path, images: torch.Tensor) -> None:
    """The evaluated samples as uint8 ``(N, C, H, W)`` in ``images`` of an ``.npz``, written atomically."""
    pixels = (images * 255).round().to(torch.uint8).numpy()
    write_atomic(path, lambda file: np.savez_compressed(file, images=pixels))


class _Scorer:
    """:func:`atomgen.eval.run_eval` on each set of samples, against the training data.

    LPIPS diversity is scored apart with :func:`atomgen.eval.lpips_diversity`, so that the real images'
    value is computed once rather than in every ``run_eval`` call; the real features are cached.
    """

    def __init__(self, data, config: DemoConfig, cache_dir: Path, device: torch.device, progress: bool):
        from ..eval import LPIPSFeatures, TensorSource, load_extractor, lpips_diversity
        from ..eval.run import DIGIT_DATASETS, METRICS

        self.real = TensorSource(data.images, value_range=(-1.0, 1.0), name=data.name, labels=data.labels)
        self.extractor = load_extractor("inception", device) if config.inception else "auto"
        self.metrics = [
            m
            for m in METRICS
            if m != "lpips_diversity" and (m != "mode_coverage" or data.name in DIGIT_DATASETS)
        ]
        self.cache_dir, self.device, self.progress = cache_dir, device, progress
        self.lpips = LPIPSFeatures().fit_to(min(data.image_shape[1:])).to(device)
        real = lpips_diversity(self.real, extractor=self.lpips, progress=progress)
        self.description: dict[str, Any] = {
            "real": {"source": data.name, "images": len(data)},
            "lpips": {"extractor": real.extractor, "preprocessing": real.preprocessing},
            "reference": {"lpips_diversity": real.mean},
        }

    def __call__(self, images: torch.Tensor, name: str) -> dict[str, Any]:
        from ..eval import TensorSource, lpips_diversity, run_eval

        started = time.perf_counter()
        fake = TensorSource(images, name=name)
        result = run_eval(
            self.real,
            fake,
            self.metrics,
            self.extractor,
            device=self.device,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        lpips = lpips_diversity(fake, extractor=self.lpips, progress=self.progress)
        scores = result["metrics"]
        metrics = {
            "fid": scores["fid"],
            "kid": scores["kid"]["mean"],
            **{key: scores["prdc"][key] for key in ("precision", "recall", "density", "coverage")},
            "vendi": scores["vendi"]["fake"],
            "lpips_diversity": lpips.mean,
        }
        reference = self.description["reference"]
        reference["vendi"] = scores["vendi"]["real"]
        if "mode_coverage" in scores:
            modes = scores["mode_coverage"]
            metrics.update(modes_covered=modes["modes_covered"], kl=modes["kl"])
            reference.update(modes_covered=modes["num_modes"], kl=0.0)
            self.description["classifier"] = modes["classifier"]
        self.description["features"] = {
            "extractor": result["extractor"],
            "preprocessing": result["preprocessing"],
        }
        self.description["kid"] = {k: scores["kid"][k] for k in ("subset_size", "num_subsets")}
        self.description["prdc_k"] = scores["prdc"]["k"]
        details = {"kid_std": scores["kid"]["std"]}
        if "mode_coverage" in scores:
            details["class_histogram"] = scores["mode_coverage"]["fake_histogram"]
        return {
            "metrics": {key: _finite_or_none(value) for key, value in metrics.items()},
            "details": details,
            "eval_seconds": time.perf_counter() - started,
        }


@torch.no_grad()
def _attribution(
    pipe: Any, site: str, images: torch.Tensor, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The atom model's learned importances and the baselines on its own samples' site features.

    The samples are re-noised to ``t = PROBE_FRACTION · T`` (nearly clean) and passed through the UNet
    once, with a capture-only hook at the site; :func:`atomgen.eval.compare_attributions` scores every
    method of :data:`ATTRIBUTIONS` by deletion and insertion curves against the same random orders.

    Returns:
        The curves and areas per method with the role head's state (mean importance, mean |charge|), and
        what the maps need: the shown images, the module, the features and the particle grid.
    """
    from ..eval import compare_attributions

    separation: AtomSeparation = pipe.separation.eval()
    unet = pipe.unet
    images = images[:DELETION_ATOMS].to(pipe.device)
    timesteps = pipe.scheduler.config.num_train_timesteps
    t = torch.full((len(images),), round(PROBE_FRACTION * (timesteps - 1)), device=pipe.device)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    noisy = pipe.scheduler.add_noise(images * 2 - 1, noise, t)
    with attach(unet, site, None) as handle:
        unet(noisy, t)
    features = handle.features
    output = separation(features)
    compared = compare_attributions(separation, features, methods=ATTRIBUTIONS, seed=seed)
    measured = {
        "atoms": len(images),
        "methods": {method: result.to_dict() for method, result in compared.items()},
        # How charged the particles are: |q| near 0 everywhere is the trivial solution of the signed mode.
        "mean_abs_charge": float(output.charge.abs().mean()),
        "mean_importance": float(output.importance.mean()),
    }
    probe = {
        "images": images[:ATTRIBUTION_IMAGES].cpu(),
        "separation": separation,
        "features": features,
        "grid": output.grid,
    }
    return measured, probe


def _attribution_maps(probe: dict[str, Any], baseline: str, seed: int) -> dict[str, Any]:
    """The shown images, the particle grid, and the learned importance and ``baseline``'s scores of them.

    The baseline is computed on the whole probed batch, as its curves were: the gradient methods
    attribute the batch's summed atom distance, so a smaller batch would rank differently.
    """
    from ..eval import particle_attributions

    shown = len(probe["images"])
    scores = {
        method: particle_attributions(probe["separation"], probe["features"], method, seed=seed + 1)[:shown]
        for method in ("importance", baseline)
    }
    return {"images": probe["images"], "grid": probe["grid"], "maps": {k: v.cpu() for k, v in scores.items()}}


# ------------------------------------------------------------------------------------------ helpers
def _mode_source(config: DemoConfig, atom: ExperimentConfig) -> str:
    """Where the atom model's mode came from: ``--mode``, an override, or the library default."""
    if config.mode is not None:
        return "--mode"
    return "--set separation.options.mode" if "mode" in atom.separation.options else "library default"


def _load_average() -> float | None:
    """The 1-minute load average (``None`` where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _finite_or_none(value: float | int) -> float | int | None:
    """JSON has no infinity: a non-finite score (an infinite class KL) becomes ``None``, with a warning."""
    if isinstance(value, float) and not math.isfinite(value):
        logger.warning("a score is %s; written as null", value)
        return None
    return value


def _brief(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None)
