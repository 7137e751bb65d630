"""The logic of ``atomgen eval``: resolve sources, compute features once, score, write the reports.

A VAE as the generated side (a run directory of ``atomgen train`` with ``model.family: vae``, an
``AutoencoderKL`` or an ``AtomVAEPipeline``) is scored on its decoded prior samples, and the VAE scores
of :mod:`.vae` (reconstruction error, KL per latent channel, active units) are added on the real images.

``atomgen/cli.py`` only parses (with :func:`add_eval_arguments`) and dispatches (to :func:`eval_command`);
everything else is an importable function here.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from atomgen.pipelines import AtomVAEPipeline

from ..io import write_json, write_text
from .classifier import classify, load_digit_classifier
from .features import EXTRACTORS, FeatureExtractor, compute_features, default_device, load_extractor
from .grids import save_image_grid
from .lpips import LPIPSFeatures, lpips_diversity
from .modes import mode_coverage
from .scores import fid, kid, prdc, vendi
from .sources import ImageSource, RunSampling, TensorSource, open_source, vae_directory
from .vae import ACTIVE_THRESHOLD, load_vae_pipeline, prior_samples, reconstruct, vae_scores

logger = logging.getLogger(__name__)

METRICS = ("fid", "kid", "prdc", "vendi", "lpips_diversity", "mode_coverage")

# What each reported number means: (direction, definition), for report.md and the README.
DESCRIPTIONS = {
    "fid": ("lower = closer to the real data", "Fréchet distance of feature means and covariances"),
    "kid": ("lower = closer to the real data", "unbiased MMD², cubic polynomial kernel, subsets ≤ 1000"),
    "precision": ("higher = more realistic", "share of samples inside some real sample's k-NN ball"),
    "recall": ("higher = more diverse", "share of real samples inside some sample's k-NN ball"),
    "density": ("higher = more realistic", "mean count of real k-NN balls holding a sample, / k"),
    "coverage": ("higher = more diverse", "share of real k-NN balls holding at least one sample"),
    "vendi": ("higher = more diverse", "exp(entropy) of the eigenvalues of the cosine kernel / N"),
    "lpips_diversity": ("higher = more diverse", "mean LPIPS (AlexNet) over all pairs of samples"),
    "modes_covered": ("higher = more diverse", "real classes the classifier finds among the samples"),
    "kl": ("lower = closer to the real data", "KL(sample class histogram ‖ real class histogram)"),
    "reconstruction_mse": (
        "lower = more faithful",
        "per-image MSE of the reconstruction from the posterior mean, pixels in [0, 1]; mean ± std",
    ),
    "kl_prior": (
        "0 = posterior collapse",
        "KL(posterior ‖ prior N(0, I)), nats per image, mean over the real images",
    ),
    "active_units": (
        "higher = less posterior collapse",
        "latent units (channel × position) whose posterior mean varies over the data, Var > threshold "
        "(Burda et al. 2016)",
    ),
}

__all__ = ["METRICS", "add_eval_arguments", "eval_command", "run_eval", "write_reports"]


# dataset name → its committed classifier (features for "auto", labels for mode coverage)
CLASSIFIER_OF_DATASET = {"digits": "digits", "mnist5k": "mnist", "fashion-mnist": "fashion"}
DIGIT_DATASETS = CLASSIFIER_OF_DATASET  # the old name, still used by atomgen.demo


def _digit_classifier_name(source: ImageSource) -> str | None:
    """The digit classifier for grey square digits: ``"digits"`` up to 16 px, ``"mnist"`` up to 32 px."""
    if source.name in CLASSIFIER_OF_DATASET:
        return CLASSIFIER_OF_DATASET[source.name]
    first = next(iter(source.batches(1)))
    channels, height, width = first.shape[1:]
    if channels != 1 or height != width:
        return None
    return "digits" if height <= 16 else "mnist" if height <= 32 else None


def run_eval(
    real: str | Path | torch.Tensor | np.ndarray | ImageSource,
    fake: str | Path | torch.Tensor | np.ndarray | ImageSource | AutoencoderKL | AtomVAEPipeline,
    metrics: list[str] | tuple[str, ...] | None = None,
    extractor: str | FeatureExtractor = "auto",
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    cache_dir: str | Path | None = None,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    num_samples: int = 256,
    num_inference_steps: int | None = None,
    active_threshold: float = ACTIVE_THRESHOLD,
    progress: bool = True,
) -> dict:
    """Evaluate generated images against real ones; optionally write ``report.json`` and ``report.md``.

    Args:
        real, fake: image folders, ``.npz`` arrays, dataset names (``digits``, ``mnist5k``,
            ``fashion-mnist``), run
            directories (saved samples, or samples drawn from the saved pipeline), tensors or sources.
            ``fake`` may also be a VAE (a VAE run directory, an ``AutoencoderKL``, an
            ``AtomVAEPipeline``): its decoded prior samples are scored, and ``report["metrics"]["vae"]``
            adds :func:`~atomgen.eval.vae_scores` on the real images (so ``real`` should be images the
            VAE was not trained on); with ``out_dir``, ``reconstructions.png`` (image | reconstruction
            pairs) and ``prior-samples.png`` are written beside the reports.
        metrics: any of :data:`METRICS`; default all, but ``mode_coverage`` only when ``real`` is a digit
            dataset (``digits``, ``mnist5k``, ``fashion-mnist``: its ten classes are the modes); on
            request it accepts any grey images up to 32 px.
        extractor: ``"auto"`` (the dataset's classifier when ``real`` is one of
            :data:`CLASSIFIER_OF_DATASET`, else the FID Inception-v3),
            a name from :data:`~atomgen.eval.features.EXTRACTORS`, or a :class:`FeatureExtractor`.
        out_dir: where to write the reports (``None``: return the dict only).
        batch_size, num_workers: images per forward pass; loader processes for image folders.
        device: default CUDA when present.
        cache_dir: feature cache folder (see :func:`~atomgen.eval.features.compute_features`).
        k: neighbours for PRDC.
        kid_subsets, kid_subset_size: KID subsets.
        num_samples: samples to draw from a run directory's pipeline (or a VAE's prior).
        num_inference_steps: denoising steps for those samples (default: the pipeline's own default).
        active_threshold: posterior-mean variance above which a VAE's latent unit is active.
        progress: progress bars.

    Returns:
        The report as a dict (what ``report.json`` holds).
    """
    device = torch.device(device) if device is not None else default_device()
    sampling = RunSampling(num_samples, batch_size, num_inference_steps)
    real_source = open_source(real, sampling=sampling, device=device)
    vae = load_vae_pipeline(fake, device) if _is_vae(fake) else None
    if vae is None:
        fake_source = open_source(fake, sampling=sampling, device=device)
    else:  # the same draws as open_source gives for a VAE run directory
        if num_inference_steps is not None:
            logger.warning(
                "a VAE has no denoising steps: num_inference_steps=%d is ignored", num_inference_steps
            )
        generator = torch.Generator().manual_seed(sampling.seed)
        samples = prior_samples(vae, num_samples, batch_size=batch_size, generator=generator)
        fake_source = TensorSource(samples, name=f"{_vae_name(fake)} (prior samples)")
    # A committed classifier serves as extractor ("auto") and by default for mode coverage only when the
    # real data is its dataset by name (digits, mnist5k, fashion-mnist); other grey images (folders) get the
    # digit classifier only on request.
    known_digits = real_source.name in CLASSIFIER_OF_DATASET
    digit_kind = _digit_classifier_name(real_source)
    if metrics is None:
        metrics = [m for m in METRICS if m != "mode_coverage" or known_digits]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if "mode_coverage" in metrics and digit_kind is None:
        raise ValueError(
            "mode_coverage needs grey digit images (8×8 or 28×28, like the digits and mnist5k datasets); "
            f"{real_source.name} is not"
        )
    _check_counts(metrics, len(real_source), len(fake_source), k)
    started = time.perf_counter()
    report: dict = {
        "real": {"source": real_source.name, "images": len(real_source)},
        "fake": {"source": fake_source.name, "images": len(fake_source)},
        "device": str(device),
        "metrics": {},
    }
    feature_metrics = [m for m in metrics if m in ("fid", "kid", "prdc", "vendi")]
    if feature_metrics:
        if isinstance(extractor, str):
            name = (digit_kind if known_digits else "inception") if extractor == "auto" else extractor
            extractor = load_extractor(name, device)
        features = {
            side: compute_features(
                source,
                extractor,
                batch_size=batch_size,
                num_workers=num_workers,
                cache_dir=cache_dir,
                progress=progress,
            )
            for side, source in (("real", real_source), ("fake", fake_source))
        }
        report["extractor"] = extractor.name
        report["preprocessing"] = extractor.preprocessing
        real_f, fake_f = features["real"], features["fake"]
        if "fid" in metrics:
            report["metrics"]["fid"] = fid(real_f, fake_f)
        if "kid" in metrics:
            result = kid(real_f, fake_f, num_subsets=kid_subsets, subset_size=kid_subset_size)
            report["metrics"]["kid"] = result.to_dict()
        if "prdc" in metrics:
            report["metrics"]["prdc"] = prdc(real_f, fake_f, k=k).to_dict()
        if "vendi" in metrics:
            report["metrics"]["vendi"] = {"fake": vendi(fake_f), "real": vendi(real_f)}
    if "lpips_diversity" in metrics:
        lpips = LPIPSFeatures().to(device)
        values = {}
        for side, source in (("fake", fake_source), ("real", real_source)):
            values[side] = lpips_diversity(
                source, extractor=lpips.fit_to(_side(source)), batch_size=batch_size, progress=progress
            )
        report["metrics"]["lpips_diversity"] = {
            "fake": values["fake"].mean,
            "real": values["real"].mean,
            "pairs": values["fake"].num_pairs,
            "extractor": values["fake"].extractor,
            "preprocessing": values["fake"].preprocessing,
        }
    if "mode_coverage" in metrics:
        classifier = load_digit_classifier(digit_kind).to(device)
        real_labels = real_source.labels
        if real_labels is None:
            real_labels = classify(real_source, classifier, batch_size=batch_size)
        result = mode_coverage(
            classify(fake_source, classifier, batch_size=batch_size), real_labels, num_classes=10
        )
        report["metrics"]["mode_coverage"] = {**result.to_dict(), "classifier": classifier.weights_name}
    if vae is not None:
        scores = vae_scores(
            vae, real_source, batch_size=batch_size, threshold=active_threshold, progress=progress
        )
        report["metrics"]["vae"] = {**scores.to_dict(), "source": real_source.name}
        if out_dir is not None:
            report["files"] = _save_vae_grids(Path(out_dir), vae, real_source, fake_source)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["versions"] = {"python": platform.python_version(), "torch": torch.__version__}
    if out_dir is not None:
        write_reports(report, out_dir)
    return report


def _is_vae(spec) -> bool:
    if isinstance(spec, AutoencoderKL | AtomVAEPipeline):
        return True
    return isinstance(spec, str | Path) and vae_directory(spec) is not None


def _vae_name(spec) -> str:
    return str(spec) if isinstance(spec, str | Path) else type(spec).__name__


def _save_vae_grids(
    out: Path, vae: AtomVAEPipeline, real: ImageSource, samples: TensorSource
) -> dict[str, str]:
    """``reconstructions.png`` (32 real images, each beside its reconstruction) and ``prior-samples.png``
    (the first 64 prior samples); returns the file names, relative to ``out``."""
    originals = next(iter(real.batches(32)))
    pairs = torch.stack([originals, reconstruct(vae, originals)], 1).flatten(0, 1)
    files = {"reconstructions": "reconstructions.png", "prior_samples": "prior-samples.png"}
    save_image_grid(out / files["reconstructions"], pairs, nrow=16)
    save_image_grid(out / files["prior_samples"], samples.images[:64], nrow=8)
    return files


def _check_counts(metrics: list[str] | tuple[str, ...], real: int, fake: int, k: int) -> None:
    """Fail before any feature is computed when a metric has too few images (never NaN later)."""
    needs = {"fid": 2, "kid": 2, "prdc": k + 1, "vendi": 1, "lpips_diversity": 2, "mode_coverage": 1}
    for metric in metrics:
        for side, count in (("real", real), ("fake", fake)):
            if count < needs[metric]:
                detail = f" (k={k} neighbours)" if metric == "prdc" else ""
                raise ValueError(
                    f"{metric}{detail} needs at least {needs[metric]} {side} images, got {count}"
                )


def _side(source: ImageSource) -> int:
    """The shorter side of a source's images."""
    return min(next(iter(source.batches(1))).shape[-2:])


def _finite(value):
    """JSON has no inf/NaN: write them as strings."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and a readable ``report.md`` (each metric with its direction and definition)."""
    out = Path(out_dir)
    json_path, md_path = out / "report.json", out / "report.md"
    write_json(json_path, _finite(report))
    lines = [
        "# atomgen eval",
        "",
        f"- real: `{report['real']['source']}` ({report['real']['images']} images)",
        f"- fake: `{report['fake']['source']}` ({report['fake']['images']} images)",
    ]
    if "extractor" in report:
        lines += [f"- features: {report['extractor']}; preprocessing: {report['preprocessing']}"]
    if "vae" in report["metrics"]:
        vae = report["metrics"]["vae"]
        lines += [f"- VAE scores on `{vae['source']}` ({vae['images']} images); latent {vae['latent_shape']}"]
    if "files" in report:
        lines += ["- grids: " + ", ".join(f"[{name}]({name})" for name in report["files"].values())]
    lines += [
        f"- device: {report['device']}; {report['seconds']} s",
        "",
        "| metric | value | direction | definition |",
    ]
    lines += ["|---|---|---|---|"]
    for name, value, extra in _rows(report["metrics"]):
        direction, definition = DESCRIPTIONS[name]
        lines.append(f"| {name} | {value} | {direction} | {definition}{extra} |")
    write_text(md_path, "\n".join(lines) + "\n")
    logger.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _rows(metrics: dict):
    if "fid" in metrics:
        yield "fid", f"{metrics['fid']:.4f}", ""
    if "kid" in metrics:
        kid_ = metrics["kid"]
        yield (
            "kid",
            f"{kid_['mean']:.6f} ± {kid_['std']:.6f}",
            f" ({kid_['num_subsets']} subsets of {kid_['subset_size']})",
        )
    if "prdc" in metrics:
        for key in ("precision", "recall", "density", "coverage"):
            yield key, f"{metrics['prdc'][key]:.4f}", f" (k = {metrics['prdc']['k']})"
    if "vendi" in metrics:
        yield "vendi", f"{metrics['vendi']['fake']:.3f} (real {metrics['vendi']['real']:.3f})", ""
    if "lpips_diversity" in metrics:
        lp = metrics["lpips_diversity"]
        yield (
            "lpips_diversity",
            f"{lp['fake']:.4f} (real {lp['real']:.4f})",
            f"; {lp['extractor']}, {lp['preprocessing']}",
        )
    if "mode_coverage" in metrics:
        mc = metrics["mode_coverage"]
        yield "modes_covered", f"{mc['modes_covered']} / {mc['num_modes']}", f"; {mc['classifier']}"
        yield "kl", f"{mc['kl']:.4f}", ""
    if "vae" in metrics:
        vae = metrics["vae"]
        per_channel = ", ".join(f"{value:.3g}" for value in vae["kl_per_channel"])
        active = ", ".join(str(count) for count in vae["active_units_per_channel"])
        yield (
            "reconstruction_mse",
            f"{vae['reconstruction_mse']:.5f} ± {vae['reconstruction_mse_std']:.5f}",
            "",
        )
        yield "kl_prior", f"{vae['kl']:.4f}", f"; per channel, nats per unit: {per_channel}"
        yield (
            "active_units",
            f"{vae['active_units']} / {vae['num_units']}",
            f"; threshold {vae['threshold']}; per channel: {active}",
        )


# --- command line ---------------------------------------------------------------------------------------

EXAMPLES = """examples:
  atomgen eval --real digits --fake runs/demo/atom --out runs/demo/eval
  atomgen eval --real real_pngs/ --fake fake_pngs/ --metrics fid prdc vendi --extractor inception
  atomgen eval --real mnist5k --fake samples.npz --metrics mode_coverage lpips_diversity
  atomgen eval --real digits --fake runs/digits-vae --out runs/digits-vae/eval   # a VAE: prior samples + VAE scores
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``atomgen eval`` options to ``parser`` (one line each, defaults shown in ``--help``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--real",
        required=True,
        help="folder, .npz, dataset name (digits, mnist5k, fashion-mnist) or run directory",
    )
    parser.add_argument(
        "--fake", required=True, help="folder, .npz, dataset name or run directory (a DDPM's or a VAE's)"
    )
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=None, help="default: all that apply")
    parser.add_argument("--extractor", default="auto", choices=("auto", *EXTRACTORS), help="default: auto")
    parser.add_argument(
        "--out", type=Path, default=Path("eval-report"), help="report folder (default: eval-report)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when present)")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: none)")
    parser.add_argument("--k", type=int, default=5, help="nearest neighbours for PRDC (default: 5)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=256,
        help="samples drawn from a run's pipeline or VAE prior (default: 256)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps for those samples (default: the pipeline's)"
    )
    parser.add_argument(
        "--active-threshold",
        type=float,
        default=ACTIVE_THRESHOLD,
        help=f"VAE: posterior-mean variance of an active latent unit (default: {ACTIVE_THRESHOLD})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def eval_command(args: argparse.Namespace) -> dict:
    """Run ``atomgen eval`` from parsed arguments; user errors raise ``ValueError``/``FileNotFoundError``/``OSError``."""
    return run_eval(
        args.real,
        args.fake,
        args.metrics,
        args.extractor,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache_dir=args.cache,
        k=args.k,
        num_samples=args.num_samples,
        num_inference_steps=args.steps,
        active_threshold=args.active_threshold,
        progress=not args.no_progress,
    )
