"""The demo's classifier-free-guidance section: one class-conditional model, plain CFG and two guidances.

One class-conditional DDPM is trained on the digits by :func:`atomgen.train.train` from the demo's base
config (:func:`experiment`: ten classes and the null label, v-prediction, 10 % label dropout, no
separation) and sampled through :class:`~atomgen.pipelines.AtomClassConditionalPipeline`. Every setting
(:data:`SETTINGS`) draws the same balanced class labels from the same initial noise and the same noise at
every step (ancestral DDIM, η = 1, as ``bench/cfg.py``: deterministic DDIM breaks CFG early here). Every
batch holds one class (:func:`class_batches`), so the guidances, which couple the samples of a batch,
push apart only samples of the same class, where CFG loses its diversity. Each batch's initial noise and
step noise are independent streams of :func:`atomgen.seeding.generator`. The settings are plain
CFG over a small grid of ``w``, and at ``w = GUIDED_SCALE`` latent atom guidance
(:func:`~atomgen.pipelines.guide`, normalised) and feature guidance
(:func:`~atomgen.pipelines.guide_features`). Each setting is scored per class against that class's real
digits on the digit classifier's features — precision, recall and coverage, averaged over classes — and
by class accuracy, the share of samples the classifier gives the requested label.

This is one seed at quick sizes, a picture of what the methods do rather than a measurement:
``bench/cfg.py`` is the benchmark (several seeds, strength sweeps, paired 95 % intervals).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..seeding import generator
from ..train.config import ConfigError, ExperimentConfig
from . import figures
from .config import DemoConfig, batch_sizes
from .scoring import quantised

logger = logging.getLogger(__name__)

__all__ = [
    "GUIDED_SCALE",
    "MODEL",
    "OVERRIDES",
    "SCALES",
    "SETTINGS",
    "Setting",
    "class_batches",
    "draw",
    "experiment",
    "markdown",
    "run_cfg",
]

MODEL = "cfg"  # the run's directory: <out>/seed-<first seed>/cfg
NUM_CLASSES = 10
OVERRIDES = (
    f"model.num_classes={NUM_CLASSES}",
    "model.objective=v_prediction",
    "train.label_dropout=0.1",
    "separation.method=none",
)
# The purposes of the section's random streams (atomgen.seeding.generator(seed, purpose, batch)).
INITIAL_NOISE, STEP_NOISE = "cfg-initial-noise", "cfg-step-noise"
ETA = 1.0  # DDIM's η: ancestral sampling, each step's noise drawn from a stream of its own per batch


# -------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One way of sampling the class-conditional model: ``method`` at ``strength`` on CFG at ``scale``."""

    key: str  # report.json, logs
    label: str  # the table, the plot
    method: str  # "cfg", "atom-guidance" or "feature-guidance"
    scale: float  # w of ε̂ = ε̂_u + w (ε̂_c − ε̂_u); w = 1 is unguided
    strength: float | None = None  # γ: a fraction of ‖ε̂‖ (latent) or of the activations' norm (feature)


SCALES = (1.0, 1.5, 2.0, 3.0)
GUIDED_SCALE = 1.5
# Middle values of bench/cfg.py's strength sweeps; both are fractions of the prediction's norm.
SETTINGS = (
    *(Setting(f"cfg-w{w:g}", f"CFG, w = {w:g}", "cfg", w) for w in SCALES),
    Setting("atom-guidance", "atom guidance (latent)", "atom-guidance", GUIDED_SCALE, 0.1),
    Setting("feature-guidance", "feature guidance", "feature-guidance", GUIDED_SCALE, 0.2),
)


def experiment(config: DemoConfig, out: Path) -> ExperimentConfig:
    """The resolved training config of the class-conditional model (raises ``ConfigError`` for a bad one)."""
    from ..eval.run import CLASSIFIER_OF_DATASET

    resolved = config.experiment(MODEL, config.seed, out, steps=config.cfg_steps, extra=OVERRIDES)
    if resolved.data.name not in CLASSIFIER_OF_DATASET:
        raise ConfigError(
            f"the CFG section scores with a dataset's digit classifier; data.name {resolved.data.name!r} "
            f"has none (known: {', '.join(CLASSIFIER_OF_DATASET)}). Run the demo with --no-cfg."
        )
    return resolved


# ------------------------------------------------------------------------------------------ the section
def run_cfg(
    experiment: ExperimentConfig,
    config: DemoConfig,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the class-conditional model, sample every setting, score it; the ``cfg`` entry of the report.

    Args:
        experiment: from :func:`experiment`.
        config: the demo's settings (``cfg_samples_per_class``, ``cfg_inference_steps``,
            ``sample_batch_size``, ``seed``).
        cache_dir: where the real images' features are cached.
        device: where the model and the scorers run.
        progress: draw the training bar and the scoring bar of the real features.
    """
    from ..pipelines import AtomClassConditionalPipeline
    from ..train import train

    started = time.perf_counter()
    logger.info("CFG: training the class-conditional model for %d steps", config.cfg_steps)
    run_dir = train(experiment, progress=progress)
    train_seconds = time.perf_counter() - started
    pipe = AtomClassConditionalPipeline.from_pretrained(run_dir / "pipeline").to(device)
    pipe.set_progress_bar_config(disable=True)
    scorer = _Scorer(experiment.data.load(), cache_dir, device, progress)

    batches = class_batches(config.cfg_samples_per_class, config.sample_batch_size)
    labels = np.concatenate(batches)
    # Every setting starts from the same latents and reseeds the same step noise: the initial noise is
    # drawn once, and each setting draws its step noise from the batch's own stream.
    noise = [
        pipe.prepare_latents(len(batch), generator(config.seed, INITIAL_NOISE, index))
        for index, batch in enumerate(batches)
    ]
    rows = []
    for setting in SETTINGS:
        images, seconds = _sample(pipe, setting, batches, noise, config.seed, config.cfg_inference_steps)
        scores = scorer(images, labels)
        logger.info("CFG, %s: %s", setting.key, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        rows.append(
            {
                "setting": setting.key,
                "label": setting.label,
                "w": setting.scale,
                "method": setting.method,
                "strength": setting.strength,
                **scores,
                "sample_seconds": seconds,
            }
        )
    return {
        "seed": config.seed,
        "model": {
            "run_dir": str(run_dir),
            "steps": experiment.train.steps,
            "objective": experiment.model.objective,
            "label_dropout": experiment.train.label_dropout,
            "train_seconds": train_seconds,
        },
        "samples_per_class": config.cfg_samples_per_class,
        "num_inference_steps": config.cfg_inference_steps,
        "batches": [len(batch) for batch in batches],
        "settings": [asdict(s) for s in SETTINGS],
        "scoring": scorer.description,
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }


def class_batches(per_class: int, batch_size: int) -> list[np.ndarray]:
    """The class labels to sample, ``per_class`` of each class, in batches that hold one class each.

    A class's images are split into near-equal batches of at most ``batch_size`` (never a batch of one:
    the guidances separate the samples of a batch), so a batch-coupled method couples only images of one
    label.
    """
    return [
        np.full(size, label, dtype=np.int64)
        for label in range(NUM_CLASSES)
        for size in batch_sizes(per_class, batch_size)
    ]


@torch.no_grad()
def _sample(
    pipe: Any,
    setting: Setting,
    batches: list[np.ndarray],
    noise: list[torch.Tensor],
    seed: int,
    steps: int,
) -> tuple[torch.Tensor, float]:
    """The setting's images in [0, 1], quantised to 8 bits, and the seconds sampling took."""
    from ..pipelines import guide, guide_features

    if setting.method == "atom-guidance":
        installed = guide(pipe, setting.strength, normalize=True)
    elif setting.method == "feature-guidance":
        installed = guide_features(pipe, setting.strength)
    else:
        installed = contextlib.nullcontext()
    started = time.perf_counter()
    with installed:  # leaving the block removes the guidance: the stock pipeline again
        chunks = [
            pipe(
                class_labels=torch.from_numpy(batch),
                guidance_scale=setting.scale,
                num_inference_steps=steps,
                eta=ETA,
                generator=generator(seed, STEP_NOISE, index),
                latents=latents,
                output_type="pt",
            ).images.cpu()
            for index, (batch, latents) in enumerate(zip(batches, noise, strict=True))
        ]
    seconds = time.perf_counter() - started
    return quantised(torch.cat(chunks)), seconds


class _Scorer:
    """Per-class precision, recall and coverage on the digit classifier's features, and class accuracy."""

    def __init__(self, data: Any, cache_dir: Path, device: torch.device, progress: bool):
        from ..eval import TensorSource, compute_features, load_digit_classifier, load_extractor
        from ..eval.per_class import PRDC_K
        from ..eval.run import CLASSIFIER_OF_DATASET

        name = CLASSIFIER_OF_DATASET[data.name]
        self.extractor = load_extractor(name, device)
        self.classifier = load_digit_classifier(name).to(device)
        real = TensorSource(data.images, value_range=(-1.0, 1.0), name=data.name)
        features = compute_features(real, self.extractor, cache_dir=cache_dir, progress=progress)
        self.real, self.real_labels = features.features, data.labels.numpy()
        self.description = {
            "real": {"source": data.name, "images": len(data)},
            "features": {"extractor": features.extractor, "preprocessing": features.preprocessing},
            "classifier": name,
            "prdc_k": PRDC_K,
        }

    def __call__(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        from ..eval import classify, compute_features, per_class_scores

        fake = compute_features(images, self.extractor, progress=False).features
        scores = per_class_scores(self.real, self.real_labels, fake, labels, distribution=False)
        return {
            **{m: scores[m] for m in ("precision", "recall", "coverage")},
            "accuracy": float(np.mean(classify(images, self.classifier) == labels)),
        }


# ------------------------------------------------------------------------------------- report.md, figure
def draw(out: Path, section: dict[str, Any]) -> dict[str, str]:
    """The front: recall against precision of every setting; its file name, relative to ``out``."""
    files = {"cfg_front": "cfg-front.png"}
    figures.save_figure(out / files["cfg_front"], figures.cfg_front_plot(section))
    return files


def markdown(report: dict[str, Any]) -> list[str]:
    """The CFG section of ``report.md`` (none when it did not run): what ran, its table, what one seed can
    and cannot say, the front plot."""
    if "cfg" not in report:
        return []
    section, shown = report["cfg"], report.get("figures", {})
    model, scoring, rows = section["model"], section["scoring"], section["rows"]
    lines = [
        "## Classifier-free guidance",
        "",
        f"A class-conditional DDPM (the same base config, v-prediction, label dropout "
        f"{model['label_dropout']:g}, no separation) trained {model['steps']} steps "
        f"({model['train_seconds']:.0f} s), sampled with {section['samples_per_class']} images per class "
        f"and setting, {section['num_inference_steps']} DDIM steps, the same labels and initial noise for "
        "every setting, in batches of one class each (the guidances push apart only samples of the same "
        f"class). Scores are per class against that class's real images on "
        f"{scoring['features']['extractor']} features (k = {scoring['prdc_k']}), averaged over classes; "
        f"class accuracy is the share of samples that the {scoring['classifier']} classifier gives the "
        "requested label.",
        "",
        "| setting | w | γ | precision ↑ | recall ↑ | coverage ↑ | class accuracy ↑ | sample s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        strength = "–" if row["strength"] is None else f"{row['strength']:g}"
        cells = [row["label"], f"{row['w']:g}", strength]
        cells += [f"{row[key]:.3f}" for key in ("precision", "recall", "coverage", "accuracy")]
        cells.append(f"{row['sample_seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    grid = [row for row in rows if row["method"] == "cfg"]
    best = {key: max(grid, key=lambda row: row[key]) for key in ("precision", "accuracy")}
    lines += [
        "",
        f"Along the plain CFG grid, precision peaks at w = {best['precision']['w']:g} and class accuracy at "
        f"w = {best['accuracy']['w']:g}."
        + _overshoot(grid, best["precision"])
        + " This is one seed at quick sizes, so differences between rows are not statistically "
        "meaningful; `bench/cfg.py` is the benchmark (several seeds, strength sweeps, paired 95 % intervals "
        "against plain CFG at matched precision).",
    ]
    if "cfg_front" in shown:
        lines += [
            "",
            f"![classifier-free guidance front]({shown['cfg_front']})",
            "",
            "Up and to the right is better. CFG is meant to trade recall for precision as w grows; a "
            "guidance method helps if its marker lies above that trade-off, at the precision of plain CFG "
            "at its w or better.",
        ]
    return lines


def _overshoot(grid: list[dict[str, Any]], peak: dict[str, Any]) -> str:
    """A plain statement when precision falls again above its best ``w``: guidance has overshot."""
    above = [row for row in grid if row["w"] > peak["w"]]
    if not above or above[-1]["precision"] >= peak["precision"] - 0.01:
        return ""
    return (
        f" Above it, precision falls with recall (to {above[-1]['precision']:.3f} at w = {above[-1]['w']:g}, "
        f"class accuracy {above[-1]['accuracy']:.3f}): on this small model strong guidance pushes the "
        "samples off the data rather than towards their class, so the useful range of w is narrow."
    )
