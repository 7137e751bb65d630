"""``report.json`` and ``report.md`` of ``atomgen eval``: every number with its direction and definition.

The Fréchet distance is named after its features (``fid`` on Inception and the dataset classifiers,
``fd_dinov2`` on DINOv2, ``fd_clip`` on CLIP); KID says which features its kernel saw; the diversity
columns carry a caveat (they compare only at comparable precision); per-class and per-prompt tables
follow the main one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ..io import write_json, write_text

logger = logging.getLogger(__name__)

__all__ = ["DESCRIPTIONS", "DIVERSITY_CAVEAT", "write_reports"]

FD = ("lower = closer to the real data", "Fréchet distance of feature means and covariances")
# What each reported number means: (direction, definition), for report.md and docs/evaluation.md.
DESCRIPTIONS = {
    "fid": FD,
    "fd_dinov2": FD,
    "fd_clip": FD,
    "kid": ("lower = closer to the real data", "unbiased MMD², cubic polynomial kernel, subsets ≤ 1000"),
    "precision": ("higher = more realistic", "share of samples inside some real sample's k-NN ball"),
    "recall": ("higher = more diverse", "share of real samples inside some sample's k-NN ball"),
    "density": ("higher = more realistic", "mean count of real k-NN balls holding a sample, / k"),
    "coverage": ("higher = more diverse", "share of real k-NN balls holding at least one sample"),
    "vendi": ("higher = more diverse", "exp(entropy) of the eigenvalues of the cosine kernel / N"),
    "lpips_diversity": ("higher = more diverse", "mean LPIPS (AlexNet) over all pairs of samples"),
    "modes_covered": ("higher = more diverse", "real classes the classifier finds among the samples"),
    "kl": ("lower = closer to the real data", "KL(sample class histogram ‖ real class histogram)"),
    "class_accuracy": (
        "higher = more faithful to the class",
        "share of samples the dataset classifier gives the class they were drawn for",
    ),
    "clip_score": (
        "higher = closer to the prompt",
        "100 × max(cos(CLIP image, CLIP text), 0), mean over images (torchmetrics' CLIPScore)",
    ),
    "prompt_vendi": ("higher = more diverse", "Vendi score within each prompt; mean ± std over prompts"),
    "prompt_cosine_distance": (
        "higher = more diverse",
        "mean pairwise 1 − cos of the features within each prompt; mean ± std over prompts",
    ),
    "prompt_lpips": (
        "higher = more diverse",
        "mean pairwise LPIPS within each prompt; mean ± std over prompts",
    ),
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

DIVERSITY_CAVEAT = (
    "Diversity (recall, coverage, Vendi, LPIPS, per-prompt diversity) compares models only at comparable "
    "precision and fidelity: pure noise is not diverse in any useful sense, yet it can score either "
    "higher or lower than real images on Vendi and LPIPS. Read a diversity gain together with precision "
    "(or class accuracy, or CLIP score)."
)


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
    lines = ["# atomgen eval", ""]
    if "real" in report:
        lines.append(f"- real: `{report['real']['source']}` ({report['real']['images']} images)")
    lines.append(f"- fake: `{report['fake']['source']}` ({report['fake']['images']} images)")
    if "extractor" in report:
        lines += [f"- features: {report['extractor']}; preprocessing: {report['preprocessing']}"]
    if "clip" in report:
        lines += [f"- CLIP score: {report['clip']['name']}; preprocessing: {report['clip']['preprocessing']}"]
    if "vae" in report["metrics"]:
        vae = report["metrics"]["vae"]
        lines += [f"- VAE scores on `{vae['source']}` ({vae['images']} images); latent {vae['latent_shape']}"]
    if "files" in report:
        lines += ["- grids: " + ", ".join(f"[{name}]({name})" for name in report["files"].values())]
    lines += [f"- device: {report['device']}; {report['seconds']} s"]
    lines += [f"- note: {note}" for note in report.get("notes", [])]
    lines += ["", "| metric | value | direction | definition |", "|---|---|---|---|"]
    for name, value, extra in _rows(report["metrics"]):
        direction, definition = DESCRIPTIONS[name]
        lines.append(f"| {name} | {value} | {direction} | {definition}{extra} |")
    lines += [f"\n*{caveat}*" for caveat in report.get("caveats", [])]
    lines += _prompt_table(report["metrics"].get("prompts"))
    write_text(md_path, "\n".join(lines) + "\n")
    logger.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _spread(entry: dict, spec: str) -> str:
    if entry["std"] is None:
        return f"{entry['mean']:{spec}} (one {entry['over'][:-1]}: no spread)"
    return f"{entry['mean']:{spec}} ± {entry['std']:{spec}} (over {entry['count']} {entry['over']})"


def _rows(metrics: dict):
    for name in ("fid", "fd_dinov2", "fd_clip"):
        if name in metrics:
            yield name, f"{metrics[name]:.4f}", ""
    if "kid" in metrics:
        kid_ = metrics["kid"]
        if kid_["std"] is None:  # the subsets were the whole sets: one draw, no spread to report
            value, subsets = f"{kid_['mean']:.6f}", f" (one subset: all {kid_['subset_size']} of each set"
        else:
            value = f"{kid_['mean']:.6f} ± {kid_['std']:.6f}"
            subsets = f" ({kid_['num_subsets']} subsets of {kid_['subset_size']}"
        yield "kid", value, f"{subsets}; on {kid_.get('features', 'the given features')})"
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
    if "class_accuracy" in metrics:
        ca = metrics["class_accuracy"]
        yield "class_accuracy", f"{ca['accuracy']:.4f}", f"; {ca['classifier']}, {ca['images']} samples"
    if "per_class" in metrics:
        pc = metrics["per_class"]
        detail = f" (per class, mean over {pc['classes']} classes, {pc['features']})"
        for key in ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips"):
            if key in pc["scores"]:
                name = {"lpips": "lpips_diversity"}.get(key, key)
                yield name, f"{pc['scores'][key]:.4f}", detail
    if "prompts" in metrics:
        summary = metrics["prompts"]["summary"]
        if "clip_score" in summary:
            yield "clip_score", _spread(summary["clip_score"], ".3f"), ""
        for key in ("vendi", "cosine_distance", "lpips"):
            if key in summary:
                yield f"prompt_{key}", _spread(summary[key], ".4f"), ""
    if "vae" in metrics:
        yield from _vae_rows(metrics["vae"])


def _vae_rows(vae: dict):
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


def _prompt_table(prompts: dict | None) -> list[str]:
    if not prompts:
        return []

    def cell(value) -> str:
        return "—" if value is None else f"{value:.4f}"

    lines = ["", "## Per prompt", "", "| prompt | images | CLIP score | Vendi | cosine distance | LPIPS |"]
    lines.append("|---|---|---|---|---|---|")
    for row in prompts["rows"]:
        diversity = [cell(row[key]) for key in ("vendi", "cosine_distance", "lpips")]
        if row["images"] < 2:
            diversity = ["undefined (1 image)"] * 3
        prompt = row["prompt"].replace("|", "\\|")
        lines.append(f"| {prompt} | {row['images']} | {cell(row['clip_score'])} | {' | '.join(diversity)} |")
    if prompts["undefined"]:
        lines += [
            "",
            f"Diversity within a prompt is undefined for a single image: {len(prompts['undefined'])} "
            "prompts with one image are left out of the averages over prompts.",
        ]
    return lines
