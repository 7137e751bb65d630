"""The report of a guidance benchmark (``bench/cfg.py``): the verdict, then per dataset the CFG grid, the
methods at ``w*``, autoguidance, the trained variants, the targets, and every setting against CFG's front
on both axes, as Markdown and as the front plot.

It renders the report dict ``bench/cfg.py`` builds. Per dataset: ``grid`` and ``methods`` are lists of rows
(``setting``, ``method``, ``scale``, ``strength``, ``parts``, ``model``, ``guide``, and per metric a
:func:`atomgen.benchmark.report.summary` with per-seed ``values``), ``front`` maps a setting's name to
``{"precision": FrontGap.to_dict(), "accuracy": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atomgen.benchmark import verdict
from atomgen.benchmark.report import MACHINE, Series, beyond_ends, cell, table
from atomgen.benchmark.report import front_plot as draw
from atomgen.benchmark.stats import ACCURACY_RISE, AXES, SLACKS, format_interval

SHOWN = ("fid", "precision", "recall", "coverage", "density", "vendi", "lpips", "accuracy")
AXIS_LABELS = {"precision": "precision (fidelity)", "accuracy": "class accuracy (adherence)"}


def kind(row: dict[str, Any]) -> str:
    """``"variant"`` (a trained variant under plain CFG), ``"autoguidance"`` (alone), or ``"method"``."""
    if row.get("model"):
        return "variant"
    return "autoguidance" if row["method"] == "autoguidance" else "method"


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    preset = report["preset"]
    lines = [
        "# Classifier-free guidance: diversity at matched fidelity and adherence (bench/cfg.py)",
        "",
        f"Models: configs/<dataset>-{report.get('model', 'cfg')}.yaml, {preset['seeds']} model seed(s); "
        f"{preset['samples_per_class']} samples per class per setting (10 classes), "
        f"{preset['inference_steps']} sampling steps (DDIM with η = {preset['eta']:g}; a rectified flow: "
        "Euler), the same noise for every setting of a seed (independent streams per seed and batch), "
        "sampled and scored as `atomgen compare --extractor classifier` does. **Batch methods (atom "
        "guidance, Particle Guidance) act within one class**: they repel samples of the same class only. "
        "Per-class scores on the dataset classifier's features, "
        "averaged over classes; accuracy = the classifier agrees with the requested label. Δ = paired "
        "difference to the baseline models' plain CFG at the same w, [95 % t-interval over seeds]; an "
        "interval containing 0 is not a result. The JSON holds every score's per-seed values.",
        MACHINE.format(**report["machine"]),
    ]
    if any("front" in part for part in report["datasets"].values()):
        lines += ["", "## Verdict: above CFG's front", "", *verdict_section(report)]
    for dataset, part in report["datasets"].items():
        lines += ["", f"## {dataset}", ""]
        methods = part.get("method_seeds", part["seeds"])
        if min(part["seeds"], methods) < preset["seeds"]:
            lines += [
                f"**Interim: of {preset['seeds']} model seeds, the CFG grid is scored on {part['seeds']} "
                f"and the methods on {methods}** (`--cached-only`: the seeds that have all of "
                "them; the plot's CFG line is the grid's mean, its points the methods').",
                "",
            ]
        lines += ["### The CFG grid", "", *scores_table(part["grid"], diffs=False), ""]
        lines.append(
            f"Benchmark scale w* = {part['benchmark_scale']:g} (the largest w at which class accuracy "
            f"still rises, by more than {ACCURACY_RISE:g})."
        )
        if "methods" not in part:  # --grid-only, or the sweeps not yet scored
            continue
        lines += ["", *choices(part)]
        rows = part["methods"]
        for title, which in (
            (f"Methods at w = {part['benchmark_scale']:g}", "method"),
            ("Autoguidance, over its own w grid", "autoguidance"),
            ("Trained variants, plain CFG over the grid (w = 1: CFG off)", "variant"),
        ):
            chosen = [r for r in rows if kind(r) == which]
            if chosen:
                lines += ["", f"### {title}", "", *scores_table(chosen, diffs=True)]
        lines += ["", "### Targets", "", *targets(part["targets"])]
        lines += ["", "### Against CFG's own front, on both axes", "", *front_table(part["front"])]
    return "\n".join(lines) + "\n"


def verdict_section(report: dict[str, Any]) -> list[str]:
    """The settings above CFG's front on some dataset, on every dataset and against autoguidance, and
    whether atom separation meets the benchmark's goal (:mod:`atomgen.benchmark.verdict`)."""
    datasets = list(report["datasets"])
    entries = verdict.standings(report)
    lines = [
        "Every setting that lies above CFG's front on an axis on some dataset, the same setting on every "
        "dataset (a method at that dataset's own w*): Δ recall over the front at its own value of the axis, "
        "paired 95 % interval, **above** as in each dataset's last table; then its paired Δ recall over "
        "the autoguidance setting with the largest gain that counts on that axis and dataset (–: none "
        "counts there, or the setting is autoguidance). With no true gain, a setting's interval lies "
        "above zero by chance one time in 40 on each axis, and this report tests many settings: an "
        "**above** on one dataset alone is a lead; the confirmation on the other is the test.",
        "",
    ]
    header = ["setting", "axis", *datasets, *(f"Δ vs autoguidance, {d}" for d in datasets)]
    body = []
    for entry in entries:
        cells = [entry["setting"], entry["axis"]]
        for dataset in datasets:
            gap = entry["gaps"][dataset]
            cells.append(
                "not scored"
                if gap is None
                else format_interval(gap["gain"]["mean"], gap["gain"]["low"], gap["gain"]["high"])
                + (" **above**" if gap["beats"] else " not above")
                + beyond_ends(gap)
            )
        for dataset in datasets:
            versus = entry["versus_autoguidance"][dataset]
            cells.append(
                "–"
                if versus is None
                else f"{format_interval(versus['diff']['mean'], versus['diff']['low'], versus['diff']['high'])} "
                f"(vs {versus['autoguidance']})"
            )
        body.append(cells)
    lines += table(header, body) if body else ["No setting lies above CFG's front on any axis."]
    anchors = [
        f"{e['setting']} ({e['axis']} axis; "
        + ", ".join(d for d in datasets if (e["gaps"][d] or {}).get("beats"))
        + ")"
        for e in entries
        if e["anchor"]
    ]
    lines += [
        "",
        "Autoguidance, the anchor, lies above CFG's front "
        + (f"with: {'; '.join(anchors)}." if anchors else "on no axis of any dataset."),
        "",
    ]
    seeds = report["preset"]["seeds"]
    scored = [min(p["seeds"], p.get("method_seeds", 0)) for p in report["datasets"].values()]
    if len(datasets) < 2 or min(scored) < seeds:
        lines.append(
            "The goal (atom separation above CFG's front on an axis on the tuning dataset, confirmed "
            "untouched on the other, tying or beating autoguidance) is judged once both datasets have "
            f"every setting scored on {seeds} seeds; this report has "
            + ", ".join(f"{d} on {k}" for d, k in zip(datasets, scored, strict=True))
            + "."
        )
    else:
        met = verdict.goal(entries)
        lines.append(
            "**Goal met** (atom separation above CFG's front on every dataset, not below autoguidance): "
            + "; ".join(f"{e['setting']} on the {e['axis']} axis" for e in met)
            + "."
            if met
            else "**No variant of atom separation meets the goal**: none lies above CFG's front on one "
            "axis on every dataset while tying or beating autoguidance there."
        )
    return lines


def choices(part: dict[str, Any]) -> list[str]:
    """The chosen strengths, the ones at an end of their sweep, and autoguidance's chosen guide."""
    text = f"Strengths tuned on {part['tuned_on']}: " + ", ".join(
        f"{m} {s:g}" for m, s in part["chosen"].items()
    )
    lines = [text + " (the largest recall at w* with precision and class accuracy matched to CFG's)."]
    if part.get("for_front"):
        lines += [
            "",
            "Strengths for the front: "
            + ", ".join(f"{m} {s:g}" for m, s in part["for_front"].items())
            + " (the largest gain over CFG's front on the tuning seeds, on an axis where it counts).",
        ]
    ends = {**part.get("front_ends", {}), **part.get("ends", {})}
    if ends:
        where = ", ".join(f"{m} (at the {end} of its sweep)" for m, end in ends.items())
        lines += ["", f"**Not bracketed**: {where}; extend the sweep before trusting the choice."]
    if part.get("variant"):
        lines += [
            "",
            f"Trained variant on every seed: {part['variant']} (of the variants trained on the tuning seed, "
            "the largest mean recall gain over CFG's front, on an axis where it counts).",
        ]
    if part.get("guide"):
        step, scale = part["guide"]
        lines += [
            "",
            f"Autoguidance: guided by the step-{step} snapshot on every seed, at w = {scale:g} in the "
            "combinations (of the guides and w on the tuning seeds, the largest gain over CFG's front).",
        ]
    return lines


def scores_table(rows: list[dict[str, Any]], diffs: bool) -> list[str]:
    """Mean ± std per metric, and with ``diffs`` the paired difference to plain CFG below it."""
    return table(
        ["setting", *SHOWN],
        ([row["setting"], *(cell(row[m], diff=diffs) for m in SHOWN)] for row in rows),
    )


def targets(result: dict[str, Any]) -> list[str]:
    """Each method's recovered share of CFG's recall loss (atom guidance, then the peers) and its gaps to
    the peers."""
    methods = {m: row for m, row in result.items() if m != "recall_lost"}
    peers = list(dict.fromkeys(p for row in methods.values() for p in row["peers"]))
    lines = [
        f"CFG lost {result['recall_lost']:.3f} recall from w = 1 to w*. Recovered = the share of it that a "
        "method wins back over plain CFG (target ≥ 0.5 at matched fidelity). Δ recall to each peer: paired, "
        "[95 % interval]; the peer's precision gap in parentheses (matched when within ±0.01).",
        "",
    ]
    header = ["method", "recovered", "matched fidelity", *(f"Δ recall vs {p}" for p in peers)]
    body = []
    for method, row in methods.items():
        cells = [
            f"{format_interval(p['recall']['mean'], p['recall']['low'], p['recall']['high'])} "
            f"({p['precision_diff']:+.3f})"
            if (p := row["peers"].get(peer))
            else "—"
            if peer == method
            else "n/a"
            for peer in peers
        ]
        recovered = "n/a" if row["recovered"] is None else f"{row['recovered']:.2f}"
        body.append([method, recovered, "yes" if row["matched"] else "no", *cells])
    return lines + table(header, body)


def front_table(front: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Every setting's recall gain over CFG's front at its own precision and at its own class accuracy,
    with the other axis against the front's, and whether it lies above the front on that axis."""
    lines = [
        "Per seed, CFG's front is its grid points that no other beats on the axis and recall, joined "
        "along w; the gain is the setting's recall minus the front's at the setting's own value of the "
        "axis (held at the front's ends beyond them), averaged over seeds with a paired 95 % interval. "
        "**Above** the front on an axis: the interval clear of zero and the other axis no worse than the "
        f"front's there by more than {SLACKS['precision']:g}, and every seed within the front's range "
        "(beyond its ends the front is unmeasured; such seeds are counted).",
        "",
    ]
    header = ["setting"]
    for axis in AXES:
        other = AXES[1 - AXES.index(axis)]
        header += [f"Δ recall at its {axis}", f"{other} − front's", f"above ({axis} axis)"]
    body = []
    for name, gaps in front.items():
        cells = [name]
        for axis in AXES:
            gap = gaps[axis]
            outside = beyond_ends(gap)
            cells += [
                format_interval(gap["gain"]["mean"], gap["gain"]["low"], gap["gain"]["high"]),
                f"{gap['other_diff']['mean']:+.3f}",
                ("**yes**" if gap["beats"] else "no") + outside,
            ]
        body.append(cells)
    return lines + table(header, body)


def front_plot(report: dict[str, Any], path: Path) -> None:
    """Per dataset and axis (precision, class accuracy) against recall: CFG's grid, each trained variant
    and each autoguidance guide as lines over their own w, the other methods as markers (means)."""
    panels = []
    for dataset, part in report["datasets"].items():
        for axis in AXES:
            series = [_series("CFG", part["grid"], axis, line=True)]
            rows = part.get("methods", [])
            groups: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                key = {
                    "variant": f"trained {row['model']} (CFG)",
                    "autoguidance": f"autoguidance step {row['guide']}",
                }.get(kind(row), row["method"])
                groups.setdefault(key, []).append(row)
            series += [
                _series(key, group, axis, line=kind(group[0]) != "method") for key, group in groups.items()
            ]
            panels.append((dataset, AXIS_LABELS[axis], series))
    draw(panels, path)


def _series(name: str, rows: list[dict[str, Any]], axis: str, line: bool) -> Series:
    labels = [f"w={r['scale']:g}" for r in rows] if line else []
    return Series(name, [r[axis]["mean"] for r in rows], [r["recall"]["mean"] for r in rows], line, labels)
