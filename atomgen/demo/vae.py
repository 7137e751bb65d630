"""The demo's VAE section: a plain VAE and one with atom separation at the encoder, on held-out images.

Two ``AutoencoderKL`` VAEs are trained by :func:`atomgen.train.train` from ``configs/digits-vae.yaml``
(:func:`experiments`) with the same seed, on the demo's dataset less ``vae_held_out`` images: plain
(``separation.method=none``) and with atom separation on the posterior mean (the config's λ). Each is
measured on the held-out images by :func:`atomgen.eval.vae_scores` (reconstruction error from the
posterior mean, KL to the prior, active units), and its decoded prior samples ``z ~ N(0, I)`` — the same
draws for both models — are scored by the demo's own scorer, like the DDPMs' samples.

This is one seed at quick sizes, a picture of what separation at the encoder does rather than a
measurement.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..seeding import generator
from ..train.config import ConfigError, DataConfig, ExperimentConfig
from . import figures
from .config import DemoConfig
from .scoring import decimals_of, number, quantised

logger = logging.getLogger(__name__)

__all__ = ["BASE_CONFIG", "MODELS", "draw", "experiments", "markdown", "run_vae"]

BASE_CONFIG = "configs/digits-vae.yaml"
MODELS = {"vae-baseline": "none", "vae-atom": "atom"}  # run directory → separation.method
RECONSTRUCTED = 16  # held-out images in the figure, each above its two reconstructions
SHOWN = 32  # prior samples of each model in the figure


def experiments(config: DemoConfig, out: Path, data: DataConfig) -> dict[str, ExperimentConfig]:
    """The resolved training configs of the two VAEs (raises ``ConfigError`` for a bad one).

    The model, optimiser and λ come from :data:`BASE_CONFIG` as it is (the demo's ``overrides`` are for
    its DDPM config); the data is the demo's, ``data``, less ``vae_held_out`` images: ``data.limit``
    keeps a fixed random subset for training, and the rest is held out
    (:meth:`~atomgen.train.config.DataConfig.held_out`).
    """
    size = len(dataclasses.replace(data, limit=None).load())
    keep = size - config.vae_held_out
    if keep < 2:
        raise ConfigError(
            f"vae_held_out={config.vae_held_out} leaves {keep} of the {size} images of {data.name!r} to "
            f"train the VAEs on; hold out fewer (at most {size - 2})"
        )
    resolved = {}
    for model, method in MODELS.items():
        extra = [f"separation.method={method}"]
        if method == "atom" and config.mode is not None:
            extra.append(f"separation.options.mode={config.mode}")
        experiment = config.experiment(
            model, config.seed, out, steps=config.vae_steps, extra=extra, base=BASE_CONFIG
        )
        resolved[model] = dataclasses.replace(experiment, data=dataclasses.replace(data, limit=keep))
    return resolved


# ------------------------------------------------------------------------------------------ the section
def run_vae(
    experiments: dict[str, ExperimentConfig],
    config: DemoConfig,
    scorer: Callable[[torch.Tensor, str], dict[str, Any]],
    device: torch.device,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train both VAEs, measure them on the held-out images, score their prior samples.

    Args:
        experiments: from :func:`experiments`.
        config: the demo's settings (``vae_samples``, ``seed``).
        scorer: the demo's scorer of a set of images in [0, 1] (``metrics``, ``eval_seconds``).
        device: where the models run.
        progress: draw the training bars.

    Returns:
        The ``vae`` entry of the report, and the pictures of the figure: ``originals`` (held-out images),
        ``reconstructions`` and ``samples`` per model.
    """
    from ..eval import load_vae_pipeline, prior_samples, reconstruct, vae_scores
    from ..train import train

    started = time.perf_counter()
    first = next(iter(experiments.values()))
    images = (first.data.held_out().images + 1) / 2  # vae_scores takes [0, 1]
    logger.info("VAE: %d training images, %d held out", first.data.limit, len(images))
    rows, reconstructions, samples = [], {}, {}
    for model, experiment in experiments.items():
        logger.info("VAE: training %s for %d steps", model, experiment.train.steps)
        clock = time.perf_counter()
        run_dir = train(experiment, progress=progress)
        train_seconds = time.perf_counter() - clock
        pipe = load_vae_pipeline(run_dir, device)
        scores = vae_scores(pipe, images)
        # The same prior draws for both models; 8-bit like every scored set of the demo.
        draws = generator(config.seed, "vae-prior")
        drawn = quantised(prior_samples(pipe, config.vae_samples, generator=draws))
        scored = scorer(drawn, f"{model} prior samples")
        reconstructions[model] = reconstruct(pipe, images[:RECONSTRUCTED])
        samples[model] = drawn[:SHOWN]
        separation = experiment.separation
        rows.append(
            {
                "model": model,
                "separation": separation.method,
                "weight": separation.weight if separation.method != "none" else None,
                "options": dict(separation.options),
                "run_dir": str(run_dir),
                "train_seconds": train_seconds,
                "vae": scores.to_dict(),
                **scored,
            }
        )
        logger.info(
            "VAE, %s: reconstruction MSE %.5f, KL %.2f, active units %d/%d, recall %.3f, coverage %.3f",
            model,
            scores.reconstruction_mse,
            scores.kl,
            scores.active_units,
            scores.num_units,
            scored["metrics"]["recall"],
            scored["metrics"]["coverage"],
        )
    model = first.model
    section = {
        "seed": config.seed,
        "config": BASE_CONFIG,
        "model": {
            "block_out_channels": list(model.block_out_channels),
            "latent_channels": model.latent_channels,
            "kl_weight": model.kl_weight,
            "steps": first.train.steps,
            "batch_size": first.train.batch_size,
        },
        "dataset": first.data.name,
        "training_images": first.data.limit,
        "held_out_images": len(images),
        "prior_samples": config.vae_samples,
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    pictures = {"originals": images[:RECONSTRUCTED], "reconstructions": reconstructions, "samples": samples}
    return section, pictures


# ------------------------------------------------------------------------------------- report.md, figure
def draw(out: Path, pictures: dict[str, Any]) -> dict[str, str]:
    """Held-out images and their reconstructions, and prior samples; the file name, relative to ``out``."""
    files = {"vae": "vae.png"}
    figures.save_figure(out / files["vae"], figures.vae_plot(pictures))
    return files


def markdown(report: dict[str, Any]) -> list[str]:
    """The VAE section of ``report.md`` (none when it did not run): what ran, its table, the difference
    atom − baseline, the figure."""
    if "vae" not in report:
        return []
    section, shown = report["vae"], report.get("figures", {})
    model, rows = section["model"], section["rows"]
    atom = next(row for row in rows if row["separation"] != "none")
    options = ", ".join(f"{k} = {v}" for k, v in atom["options"].items())
    lines = [
        "## VAE: atom separation at the encoder",
        "",
        f"Two `AutoencoderKL` VAEs from `{Path(section['config']).name}` (block_out_channels "
        f"{model['block_out_channels']}, {model['latent_channels']} latent channels, KL weight "
        f"{model['kl_weight']:g}), trained {model['steps']} steps of {model['batch_size']} images with the "
        f"same seed on {section['training_images']} images of {section['dataset']}: plain, and with atom "
        f"separation on the posterior mean (λ = {atom['weight']:g}"
        + (f", {options}" if options else "")
        + f"). **{section['held_out_images']} images are held out** (never trained on): reconstruction "
        "error (decoded posterior mean, pixels in [0, 1]), KL to the prior N(0, I) (nats per image, "
        "summed over the latent units) and active units (channel × position units whose posterior mean "
        f"varies over the held-out images by more than {atom['vae']['threshold']:g}, Burda et al.) are "
        f"measured on them. {section['prior_samples']} prior samples z ~ N(0, I) per VAE, the same draws "
        "for both, are decoded and scored like the DDPMs' samples, against all the real images.",
        "",
        "| VAE | recon. MSE ↓ | KL | active units ↑ | FID ↓ | precision ↑ | recall ↑ | coverage ↑ | "
        "Vendi ↑ | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        scores, metrics = row["vae"], row["metrics"]
        cells = [
            row["model"],
            f"{scores['reconstruction_mse']:.5f}",
            f"{scores['kl']:.2f}",
            f"{scores['active_units']} / {scores['num_units']}",
            *[
                "–" if metrics.get(key) is None else number(metrics[key], decimals_of(key))
                for key in ("fid", "precision", "recall", "coverage", "vendi")
            ],
            f"{row['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    base = next(row for row in rows if row["separation"] == "none")
    ratio = atom["vae"]["reconstruction_mse"] / base["vae"]["reconstruction_mse"] - 1
    deltas = ", ".join(
        f"{key} {atom['metrics'][key] - base['metrics'][key]:+.3f}"
        for key in ("recall", "coverage", "precision")
        if atom["metrics"].get(key) is not None and base["metrics"].get(key) is not None
    )
    lines += [
        "",
        f"Atom − baseline: active units {atom['vae']['active_units'] - base['vae']['active_units']:+d}, "
        f"reconstruction error {ratio:+.1%}, {deltas}. One seed at quick sizes: a picture of what "
        "separation at the encoder does, not a measurement; small differences may be noise.",
    ]
    if "vae" in shown:
        lines += [
            "",
            f"![VAE reconstructions and prior samples]({shown['vae']})",
            "",
            "Top: held-out images and their reconstructions by each VAE. Below: prior samples of each.",
        ]
    return lines
