"""The attribution benchmark's report (``bench/attribution.py``): its structure (methods, curves,
weightings, diagnostics), the summaries over seeds, the targets, the paired ``--versus`` differences, the
Markdown and the figure of pixel-space maps.

Every summary keeps the per-seed ``values`` beside its mean and std (:func:`atomgen.benchmark.stats.spread`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomgen.benchmark.report import cell, save_figure, setup_lines
from atomgen.benchmark.stats import format_interval, paired_interval, spread

DATASETS = ("mnist5k", "fashion-mnist")
LEARNED = "importance"
BASELINES = ("feature_norm", "gradient_x_activation", "integrated_gradients")
METHODS = (LEARNED, *BASELINES)
TARGET_BASELINES = ("gradient_x_activation", "feature_norm")  # what the learned importances must beat
CURVES = ("deletion", "insertion")
WEIGHTINGS = ("learned", "uniform")  # atomgen.eval's: the distance the curves measure
CURVES_OF = {"learned": "curves", "uniform": "uniform_curves"}  # a measurement row's key per weighting
SUMMARY_OF = {"learned": "summary", "uniform": "uniform"}  # a seed measurement's summary per weighting
LABELS = {
    LEARNED: "learned importance s",
    "feature_norm": "feature norm",
    "gradient_x_activation": "gradient × activation",
    "integrated_gradients": "integrated gradients",
    "random": "random orders",
}

SAMPLE_METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "modes_covered")
DIAGNOSTICS = (
    "importance_spread",
    "sample_spread",
    "role_entropy",
    "role_entropy_fraction",
    "mean_abs_charge",
    "mean_importance",
)


def targets(paired: dict[str, dict[str, dict[str, dict[str, float | None]]]]) -> dict[str, Any]:
    """The target: on both datasets, the learned importances' deletion and insertion gains
    exceed those of gradient × activation and of the feature norm, the paired 95 % interval over seeds
    excluding zero (its lower end above 0).

    Args:
        paired: ``dataset → baseline → curve → {"mean", "low", "high"}``, the paired differences
            learned − baseline; a dataset that was not measured is missing, which misses the target.

    Returns:
        ``checks`` (one row per dataset, baseline and curve, with ``met``), ``met`` (all of them),
        ``missing`` (the datasets not measured).
    """
    checks = []
    for dataset in DATASETS:
        for baseline in TARGET_BASELINES:
            for curve in CURVES:
                interval = paired.get(dataset, {}).get(baseline, {}).get(curve)
                low = None if interval is None else interval["low"]
                checks.append(
                    {
                        "dataset": dataset,
                        "baseline": baseline,
                        "curve": curve,
                        "interval": interval,
                        "met": bool(low is not None and low > 0),
                    }
                )
    missing = [d for d in DATASETS if d not in paired]
    return {"checks": checks, "met": all(c["met"] for c in checks), "missing": missing}


def seed_numbers(measurement: dict[str, Any], samples: dict[str, Any]) -> dict[str, float]:
    """What ``--versus`` compares for one seed: the learned importances' gains under both weightings,
    the role entropy (as a share of ln 3) and the sample scores."""
    numbers = {
        f"{curve} gain ({weighting})": measurement[SUMMARY_OF[weighting]][LEARNED][f"{curve}_gain"]
        for weighting in WEIGHTINGS
        for curve in CURVES
    }
    numbers["role entropy / ln 3"] = measurement["summary"]["diagnostics"]["role_entropy_fraction"]
    return numbers | {
        f"samples: {k}": samples["scores"][k] for k in ("fid", "precision", "recall", "coverage")
    }


def versus(this: list[dict[str, float]], other: list[dict[str, float]]) -> dict[str, Any]:
    """Paired differences ``this − other`` over the seeds both variants measured (lists of
    :func:`seed_numbers`, seed by seed), with both sides' mean ± std."""
    count = min(len(this), len(other))
    rows = {}
    for key in this[0]:
        mine, theirs = [s[key] for s in this[:count]], [s[key] for s in other[:count]]
        mean, low, high = paired_interval([a - b for a, b in zip(mine, theirs, strict=True)])
        rows[key] = {
            "this": spread(mine),
            "other": spread(theirs),
            "difference": {"mean": mean, "low": low, "high": high},
        }
    return {"seeds": count, "rows": rows}


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``(B, n)`` scores min–max scaled to [0, 1] (a constant row becomes 0): the maps of
    methods with different units side by side. The curves depend on the order only."""
    low, high = scores.min(1, keepdim=True).values, scores.max(1, keepdim=True).values
    return torch.where(high > low, (scores - low) / (high - low).clamp_min(1e-12), 0.0)


def seed_summary(rows: list[dict[str, Any]], weighting: str = "learned") -> dict[str, Any]:
    """Means over noise levels and batches: each method's areas and gains, random's areas, diagnostics."""

    def mean(key: str, method: str) -> float:
        return statistics.fmean(r[CURVES_OF[weighting]][method][key] for r in rows)

    summary: dict[str, Any] = {
        m: {
            "deletion_auc": mean("auc_importance", m),
            "insertion_auc": mean("insertion_auc_importance", m),
            "deletion_gain": mean("gain", m),
            "insertion_gain": mean("insertion_gain", m),
        }
        for m in METHODS
    }
    summary["random"] = {
        "deletion_auc": mean("auc_random", LEARNED),
        "insertion_auc": mean("insertion_auc_random", LEARNED),
    }
    summary["diagnostics"] = {k: statistics.fmean(r["diagnostics"][k] for r in rows) for k in DIAGNOSTICS}
    return summary


def compare(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed summaries of one weighting: every method's areas and gains as mean ± std over seeds, the
    paired differences learned − baseline of the gains (equal to those of the areas: both share the
    random orders) with 95 % intervals, and the best method on each curve."""
    methods = {
        m: {key: spread([s[m][key] for s in summaries]) for key in summaries[0][m]}
        for m in (*METHODS, "random")
    }
    paired = {}
    for baseline in BASELINES:
        paired[baseline] = {}
        for curve in CURVES:
            key = f"{curve}_gain"
            mean, low, high = paired_interval([s[LEARNED][key] - s[baseline][key] for s in summaries])
            paired[baseline][curve] = {"mean": mean, "low": low, "high": high}
    best = {c: max(METHODS, key=lambda m: methods[m][f"{c}_gain"]["mean"]) for c in CURVES}
    return {"methods": methods, "paired": paired, "best": best}


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A dataset's seeds: :func:`compare` under the learned weighting (top level: the benchmark's measure)
    and under the uniform one (``"uniform"``), the gains by noise level and the diagnostics."""
    by_tau = {
        tau: {
            m: {f"{c}_gain": spread([s["by_tau"][tau][m][f"{c}_gain"] for s in seeds]) for c in CURVES}
            for m in METHODS
        }
        for tau in seeds[0]["by_tau"]
    }
    summaries = [s["summary"] for s in seeds]
    diagnostics = {k: spread([s["diagnostics"][k] for s in summaries]) for k in DIAGNOSTICS}
    return {
        "seeds": len(seeds),
        "reference": seeds[0]["reference"],
        **compare(summaries),
        "uniform": compare([s["uniform"] for s in seeds]),
        "by_tau": by_tau,
        "diagnostics": diagnostics,
        "measure_seconds": [s["seconds"] for s in seeds],
    }


def markdown(report: dict[str, Any]) -> str:
    preset = report["preset"]
    taus = ", ".join(f"{t:g}" for t in preset["taus"])
    lines = [
        "# Attribution faithfulness at the separation site (bench/attribution.py)",
        "",
        f"{preset['seeds']} model seeds per dataset: unconditional DDPMs trained with atom separation "
        "(configs/<dataset>-ddpm.yaml, separation.method=atom, the library's separation defaults). "
        f"Held-out real images, {preset['batches']} batches of {preset['images']} per noise level τ ∈ {{{taus}}}, "
        "one UNet forward each; the particles are the separation module's (after pooling). Particles are "
        "ranked by each method and deleted (inserted) by rank: deletion = relative drop of the atom distance "
        "d̄, insertion = its recovery from the fully masked batch (method.md §9); a deleted or not yet "
        f"inserted particle is replaced by the atom's {_reference(report)}. AUC: area under the curve "
        f"(higher = more faithful); gain = AUC − the mean AUC of {preset['num_random']} random orders on the "
        f"same batch. Integrated gradients: {preset['steps']} steps. Mean ± std over seeds of the per-seed "
        "means over τ and batches; Δ = paired difference learned − baseline of the gains, "
        "[95 % t-interval over seeds]; an interval containing 0 is not a result.",
        "",
        *setup_lines(report),
    ]
    for dataset, part in report["datasets"].items():
        lines += ["", f"## {dataset}", "", f"Site `{part['site']}`.", "", *_comparison(part)]
        if "uniform" in part:
            lines += [
                "",
                "The same curves on the distance with every particle weighted 1 (uniform weighting: the role "
                "head cannot shape it; the gradient methods attribute this distance):",
                "",
                *_comparison(part["uniform"]),
            ]
        lines += [
            "",
            "By noise level (gains, mean ± std over seeds):",
            "",
            "| τ | " + " | ".join(f"{LABELS[m]} del. / ins." for m in METHODS) + " |",
            "|---" * (len(METHODS) + 1) + "|",
        ]
        for tau, methods in part["by_tau"].items():
            cells = [
                f"{cell(methods[m]['deletion_gain'])} / {cell(methods[m]['insertion_gain'])}" for m in METHODS
            ]
            lines.append(f"| {tau} | " + " | ".join(cells) + " |")
        diagnostics = part["diagnostics"]
        lines += [
            "",
            "Role head: s spread = std of s across a sample's particles (averaged); "
            "across samples = std of s across the samples at each particle index (averaged; 0 = the same "
            "map for every sample); role entropy in nats and as a share of ln 3 (1 = uniform roles).",
            "",
            "| s spread | across samples | role entropy | entropy / ln 3 | mean abs(q) | mean s |",
            "|---|---|---|---|---|---|",
            "| " + " | ".join(cell(diagnostics[k], ".4f") for k in DIAGNOSTICS) + " |",
        ]
        if "samples" in part:
            scores = part["samples"]["scores"]
            lines += [
                "",
                f"Samples of these models ({preset['samples']} each, DDIM {preset['sample_steps']} steps, the "
                f"same noise for every seed and variant) against {preset['reference_images']} held-out "
                f"images, {part['samples']['extractor']} features:",
                "",
                "| " + " | ".join(SAMPLE_METRICS) + " |",
                "|---" * len(SAMPLE_METRICS) + "|",
                "| " + " | ".join(cell(scores[k]) for k in SAMPLE_METRICS) + " |",
            ]
    if report.get("versus"):
        lines += ["", f"## Against `{report['versus']['out']}`", "", _versus_what(report)]
        for dataset, part in report["datasets"].items():
            if "versus" in part:
                lines += [
                    "",
                    f"{dataset}, {part['versus']['seeds']} paired seeds:",
                    "",
                    *_versus(part["versus"]),
                ]
    lines += ["", "## Targets", "", *_targets(report["targets"])]
    return "\n".join(lines) + "\n"


def _comparison(part: dict[str, Any]) -> list[str]:
    """The tables of one weighting's :func:`compare`: areas and gains per method, then the paired
    differences, then the best method per curve."""
    lines = [
        "| method | deletion AUC | deletion gain | insertion AUC | insertion gain |",
        "|---|---|---|---|---|",
    ]
    for method in (*METHODS, "random"):
        row = part["methods"][method]
        gains = [cell(row[f"{c}_gain"]) if method != "random" else "—" for c in CURVES]
        lines.append(
            f"| {LABELS[method]} | {cell(row['deletion_auc'])} | {gains[0]} | "
            f"{cell(row['insertion_auc'])} | {gains[1]} |"
        )
    lines += ["", "| learned − baseline | Δ deletion gain | Δ insertion gain |", "|---|---|---|"]
    for baseline, row in part["paired"].items():
        cells = [format_interval(row[c]["mean"], row[c]["low"], row[c]["high"]) for c in CURVES]
        lines.append(f"| vs {LABELS[baseline]} | {cells[0]} | {cells[1]} |")
    best = part["best"]
    return [
        *lines,
        "",
        f"Best mean gain: deletion {LABELS[best['deletion']]}, insertion {LABELS[best['insertion']]}.",
    ]


def _versus_what(report: dict[str, Any]) -> str:
    def overrides(values: list[str] | None) -> str:
        if values is None:
            return "not recorded"
        return ", ".join(f"`{v}`" for v in values) or "none, the library defaults"

    what = report["versus"]
    compared = [d for d, part in report["datasets"].items() if "versus" in part]
    return (
        f"This run (overrides: {overrides(report.get('set'))}) against the variant in `{what['out']}` "
        f"(overrides: {overrides(what['set'])}): the same data, held-out images and noise seed by seed; "
        "Δ = this − other, [95 % t-interval over seeds]."
        + ("" if compared else " It has no seed measured with this preset's settings: nothing to compare.")
    )


def _versus(part: dict[str, Any]) -> list[str]:
    lines = ["| quantity | this | other | Δ |", "|---|---|---|---|"]
    for key, row in part["rows"].items():
        difference = row["difference"]
        lines.append(
            f"| {key} | {cell(row['this'])} | {cell(row['other'])} | "
            f"{format_interval(difference['mean'], difference['low'], difference['high'])} |"
        )
    return lines


def _reference(report: dict[str, Any]) -> str:
    references = {part["reference"] for part in report["datasets"].values()}
    return " / ".join(sorted(references)) or "mean particle"


def _targets(result: dict[str, Any]) -> list[str]:
    lines = [
        "Learned importances have a larger deletion gain and a larger insertion gain than gradient × "
        "activation and the feature norm, on both datasets, the paired interval excluding zero.",
        "",
        "| dataset | baseline | curve | Δ gain [95 % interval] | |",
        "|---|---|---|---|---|",
    ]
    for check in result["checks"]:
        interval = check["interval"]
        cell = (
            "not measured"
            if interval is None
            else format_interval(interval["mean"], interval["low"], interval["high"])
        )
        mark = "met" if check["met"] else "missed"
        lines.append(
            f"| {check['dataset']} | {LABELS[check['baseline']]} | {check['curve']} | {cell} | {mark} |"
        )
    verdict = "**met**" if result["met"] else "**missed**"
    missing = f" (not measured: {', '.join(result['missing'])})" if result["missing"] else ""
    return [*lines, "", f"Target {verdict}{missing}."]


def figure(out: Path, report: dict[str, Any], path: Path) -> None:
    """Pixel-space maps of the first seed of every dataset at the first noise level: the held-out images,
    then one row per method, each map min–max scaled per image and upsampled bilinearly from the particle
    grid. Random orders have no map worth drawing."""
    from matplotlib.figure import Figure

    from atomgen.eval import attribution_maps

    datasets, tau = list(report["datasets"]), report["preset"]["taus"][0]
    pictures = {}
    for dataset in datasets:
        with np.load(out / dataset / "seed0" / "maps.npz") as file:
            pictures[dataset] = {key: file[key] for key in file.files}
    columns = max(len(p["images"]) for p in pictures.values())
    rows = len(datasets) * (1 + len(METHODS))
    fig = Figure(figsize=(1.3 * columns + 1.6, 1.3 * rows))
    for block, dataset in enumerate(datasets):
        picture = pictures[dataset]
        images = torch.from_numpy(picture["images"])
        size, grid = tuple(images.shape[-2:]), tuple(int(g) for g in picture["grid"])
        maps = {m: attribution_maps(normalized(torch.from_numpy(picture[m])), grid, size) for m in METHODS}
        for row, name in enumerate(("image", *METHODS)):
            for column in range(len(images)):
                axes = fig.add_subplot(
                    rows, columns, (block * (1 + len(METHODS)) + row) * columns + column + 1
                )
                axes.imshow(images[column].mean(0), cmap="gray", vmin=0, vmax=1)
                if name != "image":
                    axes.imshow(maps[name][column, 0], cmap="hot", vmin=0, vmax=1, alpha=0.6)
                axes.set_xticks([])
                axes.set_yticks([])
                if column == 0:
                    label = (
                        f"{dataset}\nmaps at τ={tau:g}"
                        if name == "image"
                        else LABELS[name].replace(" ", "\n", 1)
                    )
                    axes.set_ylabel(label, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
