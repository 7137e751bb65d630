"""The VAE benchmark's report (``bench/vae.py``): its metrics and labels, the reconstruction bar, the
target, the table rows with per-seed values, the Markdown and the figure."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from atomgen.benchmark.report import save_figure, setup_lines, summary
from atomgen.benchmark.stats import format_interval, paired_interval

DATASETS = ("mnist5k", "fashion-mnist")
METHODS = ("baseline", "atom", "dispersive")
PEERS = ("baseline", "dispersive")  # what atom separation must beat
# Per model: the VAE's own scores on held-out images, then its prior samples' scores.
METRICS = (
    "reconstruction_mse",
    "active_units",
    "kl",
    "recall",
    "coverage",
    "precision",
    "density",
    "fid",
    "vendi",
    "modes_covered",
)
TARGET_METRICS = ("active_units", "recall", "coverage")
RECONSTRUCTION_SLACK = 0.05  # the bar: reconstruction error at most the baseline's + 5 %
SLACK_TEXT = f"{RECONSTRUCTION_SLACK * 100:g} %"
LABELS = {
    "baseline": "baseline",
    "atom": "atom separation",
    "dispersive": "Dispersive Loss",
    "reconstruction_mse": "recon. MSE",
    "active_units": "active units",
    "kl": "KL (nats)",
    "recall": "recall",
    "coverage": "coverage",
    "precision": "precision",
    "density": "density",
    "fid": "FID",
    "vendi": "Vendi",
    "modes_covered": "modes",
}


def admissible(reconstruction: float, baseline: float) -> bool:
    """The bar: a mean reconstruction error at most the baseline's mean + 5 %."""
    return reconstruction <= (1 + RECONSTRUCTION_SLACK) * baseline


def check_target(
    atom: list[dict[str, float]], baseline: list[dict[str, float]], dispersive: list[dict[str, float]]
) -> dict[str, Any]:
    """The target at one dataset and ``β``, from per-seed scores (paired by position: seed k).

    Atom separation meets it when its mean reconstruction error is within the bar and, against the
    baseline and against Dispersive Loss, the paired differences of active units, recall and coverage
    have a 95 % interval above zero (one seed has no interval, so it never meets it).
    """
    ratio = _mean(atom, "reconstruction_mse") / _mean(baseline, "reconstruction_mse")
    checks = []
    for peer, rows in (("baseline", baseline), ("dispersive", dispersive)):
        for metric in TARGET_METRICS:
            mean, low, high = paired_interval(
                [a[metric] - b[metric] for a, b in zip(atom, rows, strict=True)]
            )
            checks.append(
                {
                    "peer": peer,
                    "metric": metric,
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "met": bool(low is not None and low > 0),
                }
            )
    reconstruction = {"ratio": ratio, "met": admissible(ratio, 1.0)}
    met = reconstruction["met"] and all(c["met"] for c in checks)
    return {"reconstruction": reconstruction, "checks": checks, "met": met}


def targets(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The target over datasets: ``results`` is ``dataset → β → check_target(...)``. A dataset meets it
    when it does at every ``β``; the whole target, when both datasets were measured and meet it."""
    datasets = {d: bool(r) and all(check["met"] for check in r.values()) for d, r in results.items()}
    missing = [d for d in DATASETS if d not in results]
    return {"datasets": datasets, "missing": missing, "met": not missing and all(datasets.values())}


def score_row(
    setting: Any,  # bench/vae.py's Setting: its name, method and weight
    values: list[dict[str, float]],
    baseline: list[dict[str, float]],
    train_seconds: list[float | None],
) -> dict[str, Any]:
    """Per-seed values, mean ± std over seeds of every metric and the paired difference to the baseline
    (same seed)."""
    row: dict[str, Any] = {
        "setting": setting.name,
        "method": setting.method,
        "weight": setting.weight,
        "train_seconds": train_seconds,
    }
    for metric in METRICS:
        row[metric] = summary([v[metric] for v in values], [b[metric] for b in baseline])
    return row


SHOWN = METRICS  # every metric in the tables
# Δ to the baseline under the bar's metric, the target's, and precision: a gain in recall that costs
# precision is spread, not diversity.
DIFFS = ("reconstruction_mse", *TARGET_METRICS, "precision")


def markdown(report: dict[str, Any]) -> str:
    preset = report["preset"]
    factors = ", ".join(f"{f:g}×" for f in preset["kl_factors"])
    tune_seeds = min(preset["tune_seeds"] or preset["seeds"], preset["seeds"])
    seeds = f"{preset['seeds']} seeds per setting"
    if tune_seeds < preset["seeds"]:
        seeds = (
            f"{preset['seeds']} seeds for the baseline and each method's chosen λ; the sweep's other λ on "
            f"the first {tune_seeds} (the λ are chosen from the sweep on those seeds alone)"
        )
    lines = [
        "# Separation at the VAE encoder (bench/vae.py)",
        "",
        f"{seeds}; AutoencoderKL of configs/<dataset>-vae.yaml (resized by "
        f"the preset), KL weight β at {factors} the config's; separation on the posterior mean. Scores "
        f"on {preset['images']} held-out images: reconstruction MSE (posterior mean, [0, 1] pixels), KL to "
        f"the prior (nats per image), active units (Var_x(μ_u) > 0.01); {preset['samples']} prior samples "
        "against them on the dataset classifier's features (FID, precision, recall, density, coverage, "
        "Vendi, modes). Mean ± std over seeds; Δ = paired difference to the baseline at the same β (same "
        "seed, same data order), [95 % t-interval over seeds]; an interval containing 0 is not a result. "
        "★ = the λ chosen by the rule: the highest mean recall among the λ within the baseline's "
        f"reconstruction MSE + {SLACK_TEXT}, ties to more active units (none within: the lowest MSE, "
        "marked ✗).",
        "",
        *setup_lines(report),
    ]
    for dataset, part in report["datasets"].items():
        lines += [
            "",
            f"## {dataset}",
            "",
            f"{part['num_units']} latent units; features: {part['extractor']}."
            + (
                f" Each method at the λ {part['tuned_on']} chose at the same β multiple: an untouched "
                "confirmation."
                if part.get("tuned_on")
                else ""
            ),
        ]
        for kl, entry in part["kl_weights"].items():
            lines += ["", f"### β = {kl}", "", *_table(entry)]
        config = part["config"]
        if config["atom_weight"] is not None:
            choice = config["atom_weight"]
            note = "" if choice["admissible"] else " (no λ met the reconstruction bar: the lowest MSE)"
            lines += [
                "",
                f"Chosen λ for {config['path']} (β = {config['kl_weight']:g}): separation.weight = "
                f"{choice['weight']:g}{note}.",
            ]
    lines += ["", "## Target", "", *_targets(report)]
    return "\n".join(lines) + "\n"


def _table(entry: dict[str, Any]) -> list[str]:
    lines = ["| setting | " + " | ".join(LABELS[m] for m in SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    chosen = entry["chosen"]
    seeds = len(entry["rows"][0]["recall"]["values"])  # the baseline's
    for row in entry["rows"]:
        mark = ""
        if row["method"] in chosen and chosen[row["method"]]["weight"] == row["weight"]:
            mark = " ★" if chosen[row["method"]]["admissible"] else " ✗"
        cells = []
        for metric in SHOWN:
            value = row[metric]
            spec = (
                ".5f"
                if metric == "reconstruction_mse"
                else ".1f"
                if metric in ("active_units", "kl", "fid")
                else ".3f"
            )
            cell = f"{value['mean']:{spec}} ± {value['std']:{spec}}"
            if row["method"] != "baseline" and metric in DIFFS:
                scale = 1e3 if metric == "reconstruction_mse" else 1
                unit = " ×1e-3" if metric == "reconstruction_mse" else ""
                low = None if value["low"] is None else value["low"] * scale
                high = None if value["high"] is None else value["high"] * scale
                cell += f"<br>Δ {format_interval(value['diff'] * scale, low, high)}{unit}"
            cells.append(cell)
        name = f"{LABELS[row['method']]}" + ("" if row["method"] == "baseline" else f" λ={row['weight']:g}")
        if len(row["recall"]["values"]) < seeds:
            name += f" ({len(row['recall']['values'])} seed{'s' * (len(row['recall']['values']) > 1)})"
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    return lines


def _targets(report: dict[str, Any]) -> list[str]:
    lines = [
        f"At reconstruction error no worse than the baseline's + {SLACK_TEXT}, atom separation (chosen λ) "
        "gives more active units and higher prior-sample recall and coverage than the baseline and than "
        "Dispersive Loss (chosen λ) on both datasets: each paired interval above zero, at every β.",
        "",
        "| dataset | β | recon. MSE / baseline | "
        + " | ".join(f"Δ {LABELS[m]} vs {p}" for p in PEERS for m in TARGET_METRICS)
        + " | |",
        "|---" * (4 + len(PEERS) * len(TARGET_METRICS)) + "|",
    ]
    for dataset, part in report["datasets"].items():
        for kl, entry in part["kl_weights"].items():
            target = entry["target"]
            recon = target["reconstruction"]
            cells = [
                f"{format_interval(c['mean'], c['low'], c['high'])} {'✓' if c['met'] else '✗'}"
                for c in target["checks"]
            ]
            ratio = f"{recon['ratio']:.3f} {'✓' if recon['met'] else '✗'}"
            mark = "met" if target["met"] else "missed"
            lines.append(f"| {dataset} | {kl} | {ratio} | " + " | ".join(cells) + f" | {mark} |")
    result = report["targets"]
    lines.append("")
    for dataset, met in result["datasets"].items():
        lines.append(f"- {dataset}: **{'met' if met else 'missed'}**")
    missing = f" (not measured: {', '.join(result['missing'])})" if result["missing"] else ""
    lines += ["", f"Target {'**met**' if result['met'] else '**missed**'}{missing}."]
    return lines


def figure(report: dict[str, Any], path: Path) -> None:
    """Per dataset: prior recall and active units against reconstruction MSE, means over seeds; one
    colour per method, one marker per β, the λ beside each point, each β's reconstruction bar (the
    baseline's + 5 %) as a grey line."""
    from matplotlib.figure import Figure

    datasets = list(report["datasets"])
    fig = Figure(figsize=(5.5 * len(datasets), 8))
    colours = {"baseline": "black", "atom": "tab:red", "dispersive": "tab:blue"}
    markers = "os^Dv"
    for column, dataset in enumerate(datasets):
        entries = report["datasets"][dataset]["kl_weights"]
        for row_index, metric in enumerate(("recall", "active_units")):
            axes = fig.add_subplot(2, len(datasets), row_index * len(datasets) + column + 1)
            for index, (kl, entry) in enumerate(entries.items()):
                marker = markers[index % len(markers)]
                for method in METHODS:
                    rows = [r for r in entry["rows"] if r["method"] == method]
                    x = [r["reconstruction_mse"]["mean"] for r in rows]
                    y = [r[metric]["mean"] for r in rows]
                    label = f"{LABELS[method]}, β={kl}"
                    axes.plot(x, y, marker=marker, linestyle="none", color=colours[method], label=label)
                    if method != "baseline":
                        for r, xi, yi in zip(rows, x, y, strict=True):
                            axes.annotate(f"λ={r['weight']:g}", (xi, yi), fontsize=6)
                bar = entry["rows"][0]["reconstruction_mse"]["mean"] * (1 + RECONSTRUCTION_SLACK)
                style = (":", "--", "-.")[index % 3]
                axes.axvline(
                    bar, color="grey", linestyle=style, linewidth=1, label=f"baseline + {SLACK_TEXT}, β={kl}"
                )
            axes.set(
                title=dataset if row_index == 0 else None,
                xlabel="reconstruction MSE (held out)",
                ylabel="prior-sample recall" if metric == "recall" else "active units",
            )
            if row_index == 0 and column == 0:
                axes.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _mean(rows: list[dict[str, float]], metric: str) -> float:
    return statistics.fmean(row[metric] for row in rows)
