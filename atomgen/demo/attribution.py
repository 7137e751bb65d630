"""The demo's attribution section: the atom model's learned importances against the saliency baselines.

For each seed, the atom model's own samples are re-noised to ``t = PROBE_FRACTION · T`` (nearly clean)
and passed through the UNet once with a capture-only hook at the separation site;
:func:`atomgen.eval.compare_attributions` scores every method of :data:`ATTRIBUTIONS` by deletion and
insertion curves against the same random orders (:func:`measure`). :func:`summary` gathers the seeds
into the ``attribution`` entry of ``report.json``, :func:`draw` the maps (learned beside the best
baseline) and the curves, and :func:`markdown` this section's part of ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..hooks import attach
from ..seeding import generator, stream_seed
from ..separation import AtomSeparation
from . import figures
from .scoring import aggregate, format_entry

__all__ = ["ATTRIBUTIONS", "draw", "maps", "markdown", "measure", "summary"]

PROBE_FRACTION = 0.05  # samples are re-noised to t = 5 % of the trajectory to read the site's features
ATTRIBUTION_IMAGES = 12  # images in the attribution picture (one column each)
DELETION_ATOMS = 256  # atoms (samples) in the deletion and insertion curves
# The learned importance first, then the baselines it is measured against (random orders are the
# reference of every curve).
ATTRIBUTIONS = ("importance", "feature_norm", "gradient_x_activation", "integrated_gradients")
LABELS = {
    "importance": "learned importance s",
    "feature_norm": "feature norm ‖h‖",
    "gradient_x_activation": "gradient × activation",
    "integrated_gradients": "integrated gradients",
    "random": "random order",
}
CURVES = ("deletion", "insertion")


# ---------------------------------------------------------------------------------------- the work
@torch.no_grad()
def measure(pipe: Any, site: str, images: torch.Tensor, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The atom model's learned importances and the baselines on its own samples' site features.

    Returns:
        The curves and areas per method with the role head's state (mean importance, mean |charge|), and
        what :func:`maps` needs: the shown images, the module, the features, the particle grid and the
        seed of the random orders.
    """
    from ..eval import compare_attributions

    separation: AtomSeparation = pipe.separation.eval()
    unet = pipe.unet
    images = images[:DELETION_ATOMS].to(pipe.device)
    timesteps = pipe.scheduler.config.num_train_timesteps
    t = torch.full((len(images),), round(PROBE_FRACTION * (timesteps - 1)), device=pipe.device)
    noise = torch.randn(images.shape, generator=generator(seed, "attribution-noise")).to(pipe.device)
    noisy = pipe.scheduler.add_noise(images * 2 - 1, noise, t)
    with attach(unet, site, None) as handle:
        unet(noisy, t)
    features = handle.features
    output = separation(features)
    orders = stream_seed(seed, "attribution-orders")
    compared = compare_attributions(separation, features, methods=ATTRIBUTIONS, seed=orders)
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
        "seed": orders,
    }
    return measured, probe


def maps(probe: dict[str, Any], baseline: str) -> dict[str, Any]:
    """The shown images, the particle grid, and the learned importance and ``baseline``'s scores of them.

    The baseline is computed on the whole probed batch, as its curves were: the gradient methods
    attribute the batch's summed atom distance, so a smaller batch would rank differently. The scores
    are those :func:`measure` ranked by: ``compare_attributions(seed=s)`` scores each method with
    ``particle_attributions(seed=s + 1)`` (its documented convention), so the maps pass that seed.
    """
    from ..eval import particle_attributions

    shown = len(probe["images"])
    seed = probe["seed"] + 1
    scores = {
        method: particle_attributions(probe["separation"], probe["features"], method, seed=seed)[:shown]
        for method in ("importance", baseline)
    }
    return {"images": probe["images"], "grid": probe["grid"], "maps": {k: v.cpu() for k, v in scores.items()}}


# -------------------------------------------------------------------------------------- report.json
def summary(attributions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method, the areas under the deletion and insertion curves and their gains over random orders
    (mean ± std over seeds); the best baseline; the best method on each curve.

    The best baseline is the one with the largest mean of its two gains (it is drawn beside the learned
    maps). The best method on a curve is the largest gain among all methods and random orders (gain 0).

    Args:
        attributions: one entry per seed: ``seed`` and what :func:`measure` returned first.
    """
    methods = list(attributions[0]["methods"])
    keys = {
        "deletion_auc": "auc_importance",
        "deletion_gain": "gain",
        "insertion_auc": "insertion_auc_importance",
        "insertion_gain": "insertion_gain",
    }
    table = {
        method: {
            key: aggregate([a["methods"][method][name] for a in attributions]) for key, name in keys.items()
        }
        for method in methods
    }
    reference = [a["methods"][methods[0]] for a in attributions]  # the same random orders for every method
    random = {
        "deletion_auc": aggregate([r["auc_random"] for r in reference]),
        "insertion_auc": aggregate([r["insertion_auc_random"] for r in reference]),
    }
    gains = _mean_gains(table)
    baselines = [m for m in methods if m != "importance"]
    return {
        "reference": reference[0]["reference"],
        "atoms": attributions[0]["atoms"],
        "methods": methods,
        "labels": {m: LABELS.get(m, m) for m in [*methods, "random"]},
        "table": table,
        "random": random,
        "best_baseline": max(baselines, key=lambda m: gains["deletion"][m] + gains["insertion"][m]),
        "best": {curve: max(gains[curve], key=gains[curve].get) for curve in CURVES},
        "per_seed": attributions,
        "mean_abs_charge": aggregate([a["mean_abs_charge"] for a in attributions]),
        "mean_importance": aggregate([a["mean_importance"] for a in attributions]),
    }


def _mean_gains(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per curve, each method's mean gain over random orders, and random orders' own (0)."""
    return {
        curve: {**{m: e[f"{curve}_gain"]["mean"] for m, e in table.items()}, "random": 0.0}
        for curve in CURVES
    }


def draw(out: Path, section: dict[str, Any], probe: dict[str, Any]) -> dict[str, str]:
    """The maps of the best baseline (chosen over all seeds) beside the learned ones on the first seed's
    samples, and the curves of all seeds; their file names, relative to ``out``."""
    files = {"attribution": "attribution.png", "attribution_curves": "attribution-curves.png"}
    shown = maps(probe, section["best_baseline"])
    figures.save_figure(out / files["attribution"], figures.attribution_plot(shown, section["labels"]))
    figures.save_figure(out / files["attribution_curves"], figures.attribution_curves_plot(section))
    return files


# ---------------------------------------------------------------------------------------- report.md
def markdown(report: dict[str, Any]) -> list[str]:
    """The maps, the table of areas, the verdict, the role head's state and the curves."""
    attribution = report["attribution"]
    figures = report.get("figures", {})
    labels, table = attribution["labels"], attribution["table"]
    best_baseline = attribution["best_baseline"]
    per_seed = attribution["per_seed"]
    lines = ["## Attribution: learned importances against the baselines", ""]
    if "attribution" in figures:
        lines += [
            f"![attribution maps]({figures['attribution']})",
            "",
            f"Top: samples of the atom model (seed {report['seeds'][0]}). Middle: its learned importance "
            "s = 1 − r^neutron (method.md §3). Bottom: the best baseline, "
            f"**{labels[best_baseline]}** (the largest mean of its deletion and insertion gains). Each map "
            "is on the site's particle grid, upsampled bilinearly to the image and scaled to [0, 1] per "
            "image (the methods have different units, and the curves depend on the order only), laid "
            "over the sample (black 0 → red → yellow → white 1).",
            "",
        ]
    random = attribution["random"]
    lines += [
        f"Deletion and insertion curves (method.md §9) on {attribution['atoms']} atoms, the atom model's "
        "samples re-noised to 5 % of the trajectory and passed through the UNet once. Each method ranks "
        "every atom's particles at the site; **deletion** replaces the top-ranked fraction with the "
        f"masking reference, **the atom's {attribution['reference']}**, and measures the relative drop of "
        "the atom's mean distance d̄ to the other atoms; **insertion** starts from every particle replaced "
        "by it and puts the top-ranked fraction back, measuring the recovery of d̄. A faithful ranking "
        "drops (recovers) d̄ faster: a larger area under the curve. Gains are areas minus those of random "
        "orders on the same batch; the gradient methods attribute the summed atom distance.",
        "",
        "| method | deletion AUC ↑ | deletion gain ↑ | insertion AUC ↑ | insertion gain ↑ |",
        "|---|---|---|---|---|",
    ]
    for method in attribution["methods"]:
        entry = table[method]
        cells = [labels[method] + (" (best baseline)" if method == best_baseline else "")]
        cells += [format_entry(entry[key], 4) for key in ("deletion_auc", "deletion_gain")]
        cells += [format_entry(entry[key], 4) for key in ("insertion_auc", "insertion_gain")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"| {labels['random']} (reference) | {format_entry(random['deletion_auc'], 4)} | 0 | "
        f"{format_entry(random['insertion_auc'], 4)} | 0 |"
    )
    lines += ["", *_verdict(attribution)]
    if len(per_seed) > 1:
        for curve, key in (("deletion", "gain"), ("insertion", "insertion_gain")):
            wins = sum(a["methods"]["importance"][key] > a["methods"][best_baseline][key] for a in per_seed)
            lines.append(
                f"The learned importances beat {labels[best_baseline]} on {curve} in {wins} of "
                f"{len(per_seed)} seeds."
            )
    lines += [
        "",
        f"The role head on these samples: mean importance s̄ = "
        f"{format_entry(attribution['mean_importance'], 3)}, mean |charge| = "
        f"{format_entry(attribution['mean_abs_charge'], 3)}. At the demo's sizes, on the model's own samples: "
        "`bench/attribution.py` is the benchmark (held-out images, 3 seeds, paired 95 % intervals).",
        *_charge_note(report),
    ]
    if "attribution_curves" in figures:
        lines += ["", f"![deletion and insertion curves]({figures['attribution_curves']})"]
    return lines


def _verdict(attribution: dict[str, Any]) -> list[str]:
    """Which method is best on each curve, every baseline that beats the learned importances, and which
    method a user should then prefer."""
    labels, best = attribution["labels"], attribution["best"]
    gain = _mean_gains(attribution["table"])
    lines = [
        f"Best on deletion: **{labels[best['deletion']]}** (gain {gain['deletion'][best['deletion']]:+.4f}); "
        f"best on insertion: **{labels[best['insertion']]}** "
        f"(gain {gain['insertion'][best['insertion']]:+.4f})."
    ]
    for curve in CURVES:
        ours = gain[curve]["importance"]
        better = [m for m in [*attribution["methods"][1:], "random"] if gain[curve][m] > ours]
        if better:
            names = " and ".join(f"{labels[m]} ({gain[curve][m]:+.4f})" for m in better)
            verb = "beats" if len(better) == 1 else "beat"
            lines.append(f"On {curve}, {names} {verb} the learned importances ({ours:+.4f}).")
    # The advice: a baseline that beats the learned importances on both curves is the better choice here.
    both = [m for m in attribution["methods"][1:] if all(gain[c][m] > gain[c]["importance"] for c in CURVES)]
    if best["deletion"] == best["insertion"] == "importance":
        lines.append("The learned importances have the largest gain on both curves.")
    elif both:
        names = " and ".join(labels[m] for m in both)
        choice = labels[max(both, key=lambda m: gain["deletion"][m] + gain["insertion"][m])]
        lines.append(
            f"{names[0].upper()}{names[1:]} beat{'s' if len(both) == 1 else ''} the learned importances on "
            f"both curves: prefer {choice} for attribution at this site (in this run; "
            "`bench/attribution.py` tests whether it holds)."
        )
    else:
        lines.append("No baseline beats the learned importances on both curves.")
    return lines


def _charge_note(report: dict[str, Any]) -> list[str]:
    """A plain statement when the signed atom model sat at the trivial point of its loss."""
    charge = report["attribution"]["mean_abs_charge"]["mean"]
    if report["settings"]["atom_mode"] != "signed" or charge is None or charge >= 0.05:
        return []
    return [
        "",
        f"**Atom model.** Its particles ended nearly uncharged (mean |q| = {charge:.3f} on its samples). "
        "The roles start uniform (method.md §3), so q = r^p − r^e starts at 0, where the signed energy "
        "(pair weights q_i q_j) and its gradient vanish: a trivial solution of the loss, and the atom "
        "model trains much like the baseline. `--mode repulsive` (pair weights s_i s_j) does not have "
        "that solution.",
    ]
