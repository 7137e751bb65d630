"""The demo's classifier-free-guidance section: one class-conditional model, plain CFG and two guidances.

One class-conditional DDPM is trained on the digits by :func:`atomgen.train.train` from the demo's base
config (:func:`experiment`: ten classes and the null label, v-prediction, 10 % label dropout, no
separation) and sampled through :class:`~atomgen.pipelines.AtomClassConditionalPipeline`. Every setting
(:data:`SETTINGS`) draws the same balanced class labels from the same initial noise and the same noise at
every step (ancestral DDIM, η = 1, as ``bench/cfg.py``: deterministic DDIM breaks CFG early here): plain
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..train.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    from .run import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["GUIDED_SCALE", "MODEL", "OVERRIDES", "SCALES", "SETTINGS", "Setting", "experiment", "run_cfg"]

MODEL = "cfg"  # the run's directory: <out>/seed-<first seed>/cfg
NUM_CLASSES = 10
OVERRIDES = (
    f"model.num_classes={NUM_CLASSES}",
    "model.objective=v_prediction",
    "train.label_dropout=0.1",
    "separation.method=none",
)
ETA = 1.0  # DDIM's η: ancestral sampling, each step's noise drawn from a seeded generator per batch


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
        progress: show the scoring bar of the real features.
    """
    from ..pipelines import AtomClassConditionalPipeline
    from ..train import train

    started = time.perf_counter()
    logger.info("CFG: training the class-conditional model for %d steps", config.cfg_steps)
    run_dir = train(experiment)
    train_seconds = time.perf_counter() - started
    pipe = AtomClassConditionalPipeline.from_pretrained(run_dir / "pipeline").to(device)
    pipe.set_progress_bar_config(disable=True)
    scorer = _Scorer(experiment.data.load(), cache_dir, device, progress)

    labels = np.repeat(np.arange(NUM_CLASSES), config.cfg_samples_per_class)
    # Near-equal batches (never one of a single image: the guidances separate the samples of a batch),
    # and their initial noise, drawn once: every setting starts from the same latents (and reseeds the
    # same step noise).
    batches = np.array_split(labels, -(-len(labels) // config.sample_batch_size))
    noise = [
        pipe.prepare_latents(len(batch), torch.Generator().manual_seed(config.seed * 1_000_003 + index))
        for index, batch in enumerate(batches)
    ]
    rows = []
    for setting in SETTINGS:
        step_seeds = [config.seed * 1_000_019 + index for index in range(len(batches))]
        images, seconds = _sample(pipe, setting, batches, noise, step_seeds, config.cfg_inference_steps)
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
        "settings": [asdict(s) for s in SETTINGS],
        "scoring": scorer.description,
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }


@torch.no_grad()
def _sample(
    pipe: Any,
    setting: Setting,
    batches: list[np.ndarray],
    noise: list[torch.Tensor],
    step_seeds: list[int],
    steps: int,
) -> tuple[torch.Tensor, float]:
    """The setting's images in [0, 1], quantised to 8 bits, and the seconds sampling took."""
    from ..pipelines import guide, guide_features

    if setting.method == "atom-guidance":
        installed = guide(pipe, strength=setting.strength, normalize=True)
    elif setting.method == "feature-guidance":
        installed = guide_features(pipe, strength=setting.strength)
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
                generator=torch.Generator().manual_seed(step_seed),
                latents=latents,
                output_type="pt",
            ).images.cpu()
            for batch, latents, step_seed in zip(batches, noise, step_seeds, strict=True)
        ]
    seconds = time.perf_counter() - started
    return (torch.cat(chunks) * 255).round() / 255, seconds


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
