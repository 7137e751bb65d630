"""The demo's report: per-seed scores → a table of mean ± std, and that table as ``report.md``.

:func:`build` gathers what :func:`atomgen.demo.run_demo` measured into the dict written to
``report.json``; :func:`markdown` renders it. Nothing here measures anything: the numbers come from
:mod:`atomgen.eval` and :func:`atomgen.train.train`, and every column says which direction is better.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["COLUMNS", "Column", "aggregate", "build", "machine", "markdown", "versions"]


# ----------------------------------------------------------------------------------------- the columns
@dataclass(frozen=True)
class Column:
    """One metric of the table: its key in the scores, its header, which way is better, its format."""

    key: str
    label: str
    better: str  # "lower" or "higher"
    decimals: int | None  # None: four significant digits (KID's scale depends on the features)
    aspect: str  # what "better" buys: fidelity, diversity, or both (a distance between distributions)


COLUMNS = (
    Column("fid", "FID", "lower", 2, "fidelity and diversity"),
    Column("kid", "KID", "lower", None, "fidelity and diversity"),
    Column("precision", "precision", "higher", 3, "fidelity"),
    Column("recall", "recall", "higher", 3, "diversity"),
    Column("density", "density", "higher", 3, "fidelity"),
    Column("coverage", "coverage", "higher", 3, "diversity"),
    Column("vendi", "Vendi", "higher", 2, "diversity"),
    Column("lpips_diversity", "LPIPS div.", "higher", 4, "diversity"),
    Column("modes_covered", "modes", "higher", 1, "diversity"),
    Column("kl", "class KL", "lower", 4, "mode balance"),
)
# The attribution methods (atomgen.eval.attribution) as the report and the figures name them.
ATTRIBUTION_LABELS = {
    "importance": "learned importance s",
    "feature_norm": "feature norm ‖h‖",
    "gradient_x_activation": "gradient × activation",
    "integrated_gradients": "integrated gradients",
    "random": "random order",
}
CURVES = ("deletion", "insertion")
TRAINING_COLUMNS = (
    ("train_seconds", "train s", 0),
    ("final_task_loss", "task loss", 4),
    ("final_separation_loss", "separation loss", 4),
    ("final_atom_distance", "atom distance d̄", 3),
    ("final_importance_entropy", "importance entropy", 3),
)


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof = 1``; ``None`` for one value) of per-seed values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "values": list(values)}
    return {
        "mean": float(np.mean(kept)),
        "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "values": list(values),
    }


# -------------------------------------------------------------------------------------- report.json
def build(
    *,
    settings: dict[str, Any],
    methods: Sequence[Any],
    runs: list[dict[str, Any]],
    trainings: list[dict[str, Any]],
    attributions: list[dict[str, Any]],
    scoring: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``report.json``: settings, the table (mean ± std over seeds), the per-seed runs.

    Args:
        settings: what was run (the demo config, the mode the atom model used, the site, the dataset,
            and under ``methods`` each method's λ or γ as :func:`atomgen.demo.run.method_settings`
            recorded them for the run).
        methods: the table's rows (:class:`atomgen.demo.Method`).
        runs: one entry per seed and method: ``metrics``, ``train_seconds``, ``sample_seconds``, ...
        trainings: one entry per seed and trained model: wall time and final losses.
        attributions: one entry per seed: the atom model's deletion and insertion curves per
            attribution method (:func:`atomgen.eval.compare_attributions`) and its role head's state.
        scoring: the feature extractor, LPIPS and classifier names and the real data's reference values.
    """
    from atomgen.eval.run import DESCRIPTIONS

    seeds = sorted({run["seed"] for run in runs})
    table = {}
    for method in methods:
        rows = [run for run in runs if run["method"] == method.key]
        entry = {c.key: aggregate([row["metrics"].get(c.key) for row in rows]) for c in COLUMNS}
        entry["train_seconds"] = aggregate([row["train_seconds"] for row in rows])
        entry["sample_seconds"] = aggregate([row["sample_seconds"] for row in rows])
        entry["eval_seconds"] = aggregate([row["eval_seconds"] for row in rows])
        table[method.key] = entry
    training = {}
    for model in dict.fromkeys(t["model"] for t in trainings):
        rows = [t for t in trainings if t["model"] == model]
        training[model] = {key: aggregate([row.get(key) for row in rows]) for key, _, _ in TRAINING_COLUMNS}
    return {
        "title": "atomgen demo",
        "seeds": seeds,
        "settings": settings,
        "scoring": scoring,
        "columns": [
            {
                "key": c.key,
                "label": c.label,
                "better": c.better,
                "aspect": c.aspect,
                "meaning": DESCRIPTIONS[c.key][0],
                "definition": DESCRIPTIONS[c.key][1],
            }
            for c in COLUMNS
        ],
        "methods": [
            {
                "key": m.key,
                "label": m.label,
                "model": m.model,
                "kind": m.kind,
                "strength": settings["methods"][m.key]["strength"],
            }
            for m in methods
        ],
        "table": table,
        "reference": scoring["reference"],
        "training": training,
        "attribution": attribution_summary(attributions),
        "runs": runs,
        "machine": machine(),
        "versions": versions(),
    }


def attribution_summary(attributions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method, the areas under the deletion and insertion curves and their gains over random orders
    (mean ± std over seeds); the best baseline; the best method on each curve.

    The best baseline is the one with the largest mean of its two gains (it is drawn beside the learned
    maps). The best method on a curve is the largest gain among all methods and random orders (gain 0).
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
        "labels": {m: ATTRIBUTION_LABELS.get(m, m) for m in [*methods, "random"]},
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


def machine() -> dict[str, Any]:
    """The CPU model, its threads as this process sees them, and the GPU if any."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages the numbers depend on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("atomgen", "torch", "torchvision", "diffusers", "accelerate", "numpy", "scikit-learn"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# ---------------------------------------------------------------------------------------- report.md
def markdown(report: dict[str, Any]) -> str:
    """``report.md``: setup, the table, how to read it, the comparison with the baseline, the figures."""
    settings, scoring = report["settings"], report["scoring"]
    demo = settings["demo"]
    seeds = report["seeds"]
    lines = [
        "# atomgen demo: diversity at equal fidelity?",
        "",
        f"A DDPM on {settings['dataset']['name']} ({settings['dataset']['images']} images of "
        f"{'×'.join(map(str, settings['dataset']['image_shape'][1:]))}), trained three times with the "
        "same seed (same initial weights, batches, noise and timesteps) — plain, with atom separation and "
        "with Dispersive Loss — and the plain model also sampled with atom guidance and Particle Guidance. "
        f"Every method is sampled from the same initial noise and scored against the real images; "
        f"{_seed_phrase(seeds)}. Total wall time {report.get('wall_seconds', 0):.0f} s.",
        "",
        "## Results",
        "",
        *_results_table(report),
        "",
        _spread_note(seeds),
        "",
        "## How to read the columns",
        "",
        "| column | better | measures | definition |",
        "|---|---|---|---|",
    ]
    for column in report["columns"]:
        lines.append(
            f"| {column['label']} | {column['better']} ({column['meaning']}) | {column['aspect']} | "
            f"{column['definition']} |"
        )
    lines += [
        "",
        "Higher diversity is not better without bound: noise is diverse too. Read Vendi, LPIPS, recall and "
        "coverage together with precision and density (fidelity), and against the real data's own Vendi "
        "and LPIPS in the reference row. FID and KID mix both: they fall when the samples match the real "
        "distribution in quality *and* spread.",
        "",
        f"- features for FID, KID, precision, recall, density, coverage, Vendi: "
        f"**{scoring['features']['extractor']}** ({scoring['features']['preprocessing']})"
        + (
            "; not Inception, so FID is not comparable with published values" if not demo["inception"] else ""
        ),
        f"- LPIPS: {scoring['lpips']['extractor']} ({scoring['lpips']['preprocessing']})",
        f"- KID: {scoring['kid']['num_subsets']} subsets of {scoring['kid']['subset_size']}; precision, "
        f"recall, density, coverage with k = {scoring['prdc_k']}",
    ]
    if "classifier" in scoring:
        lines.append(f"- modes and class KL: classes predicted by {scoring['classifier']}")
    lines += ["", "## Against the baseline", "", *_comparison(report), "", "## Setup", "", *_setup(report)]
    lines += ["", "## Training", "", *_training_table(report), *_training_notes(report)]
    lines += ["", "## Attribution: learned importances against the baselines", "", *_attribution(report)]
    figures = report.get("figures", {})
    if "diversity_fidelity" in figures:
        lines += [
            "",
            "## Diversity against fidelity",
            "",
            f"![diversity against fidelity]({figures['diversity_fidelity']})",
            "",
            "Up and to the right is better in both panels; the dashed line is the real data's Vendi.",
        ]
    if "cfg" in report:
        lines += ["", "## Classifier-free guidance", "", *_cfg(report["cfg"], figures)]
    if "vae" in report:
        lines += ["", "## VAE: atom separation at the encoder", "", *_vae(report["vae"], figures)]
    samples = figures.get("samples", {})
    if samples:
        lines += ["", f"## Samples (seed {seeds[0]}, the same initial noise for every method)", ""]
        labels = {m["key"]: m["label"] for m in report["methods"]}
        for key, file in samples.items():
            lines += [f"**{labels.get(key, key)}**", "", f"![{key}]({file})", ""]
    lines += ["## Machine and versions", "", *_machine(report), *_timings(report), ""]
    return "\n".join(lines)


def _seed_phrase(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"one seed ({seeds[0]})"
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± standard deviation over them"


def _spread_note(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return (
            "One seed: no spread is shown, and small differences between methods may be noise. "
            "Run with `--seeds 3` for mean ± standard deviation."
        )
    return f"± is the sample standard deviation (ddof = 1) over the {len(seeds)} seeds."


def _number(value: float, decimals: int | None, sign: bool = False) -> str:
    plus = "+" if sign else ""
    return f"{value:{plus}.4g}" if decimals is None else f"{value:{plus}.{decimals}f}"


def _format(entry: dict[str, Any], decimals: int | None) -> str:
    if entry["mean"] is None:
        return "–"
    text = _number(entry["mean"], decimals)
    if entry["std"] is not None:
        text += f" ± {_number(entry['std'], decimals)}"
    return text


def _results_table(report: dict[str, Any]) -> list[str]:
    columns = report["columns"]
    arrows = {"lower": "↓", "higher": "↑"}
    decimals = {c.key: c.decimals for c in COLUMNS}
    header = ["method", *[f"{c['label']} {arrows[c['better']]}" for c in columns], "train s", "sample s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in report["methods"]:
        entry = report["table"][method["key"]]
        label = method["label"] + (f", γ = {method['strength']:g}" if method["strength"] is not None else "")
        train = _format(entry["train_seconds"], 0) if method["kind"] == "training" else "(baseline's)"
        cells = [label, *[_format(entry[c["key"]], decimals[c["key"]]) for c in columns], train]
        cells.append(_format(entry["sample_seconds"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    reference = report["reference"]
    cells = ["real data (reference)"]
    for column in columns:
        value = reference.get(column["key"])
        cells.append("–" if value is None else _number(value, decimals[column["key"]]))
    lines.append("| " + " | ".join([*cells, "", ""]) + " |")
    return lines


def _comparison(report: dict[str, Any]) -> list[str]:
    """For each method: the columns where its mean is better, worse or (over several seeds) within noise."""
    baseline = report["table"]["baseline"]
    several = len(report["seeds"]) > 1
    lines = []
    for method in report["methods"][1:]:
        entry = report["table"][method["key"]]
        groups: dict[str, list[str]] = {"better": [], "worse": [], "within seed noise": [], "same": []}
        for column in report["columns"]:
            ours, theirs = entry[column["key"]], baseline[column["key"]]
            if ours["mean"] is None or theirs["mean"] is None:
                continue
            delta = ours["mean"] - theirs["mean"]
            noise = max(ours["std"] or 0.0, theirs["std"] or 0.0)
            decimals = _decimals(column["key"])
            if _number(ours["mean"], decimals) == _number(theirs["mean"], decimals):
                group = "same"
            elif several and abs(delta) <= noise:
                group = "within seed noise"
            else:
                group = "better" if (delta < 0) == (column["better"] == "lower") else "worse"
            groups[group].append(f"{column['label']} ({_number(delta, decimals, sign=True)})")
        parts = [f"{name}: {', '.join(items)}" for name, items in groups.items() if items]
        lines.append(f"- **{method['label']}** — " + "; ".join(parts))
    lines += [
        "",
        "Differences are method − baseline, in the columns' units; *better* and *worse* follow each column's "
        "direction, *same* means equal at the precision shown"
        + (
            ", and a difference no larger than the larger of the two standard deviations is called noise."
            if several
            else " (one seed: no noise estimate)."
        ),
    ]
    return lines


def _decimals(key: str) -> int | None:
    return next(c.decimals for c in COLUMNS if c.key == key)


def _setup(report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    demo, model, train = settings["demo"], settings["model"], settings["train"]
    # Every λ, γ and τ below is what the run used (run.method_settings), never a default restated here.
    atom, dispersive = settings["methods"]["atom"], settings["methods"]["dispersive"]
    atom_guidance = settings["methods"]["atom-guidance"]["strength"]
    particle_guidance = settings["methods"]["particle-guidance"]["strength"]
    source = settings["atom_mode_source"]
    mode_line = f"**mode = {settings['atom_mode']}**" + (
        " (the library default)"
        if source == "library default"
        else f" (chosen with `{source}`; the library default is {settings['library_default_mode']})"
    )
    other = {k: v for k, v in settings["atom_options"].items() if k != "mode"}
    if other:
        mode_line += ", options " + ", ".join(f"{k} = {v}" for k, v in other.items())
    overrides = ", ".join(f"`{o}`" for o in demo["overrides"]) or "none"
    return [
        f"- model: UNet2DModel, block_out_channels {model['block_out_channels']}, "
        f"{model['num_train_timesteps']} timesteps ({model['beta_schedule']}); base config "
        f"`{Path(demo['config']).name}`, overrides: {overrides}",
        f"- training: {demo['steps']} steps of {train['batch_size']} images, AdamW lr {train['learning_rate']:g}, "
        f"EMA {train['ema_decay']}, `atomgen.train.train`",
        f"- atom separation: at `{atom['site']}`, weight λ = {atom['weight']:g}{_warmup(atom)}, {mode_line}",
        f"- Dispersive Loss: at `{dispersive['site']}`, weight λ = {dispersive['weight']:g}"
        f"{_warmup(dispersive)}, τ = {dispersive['options']['tau']:g}",
        f"- atom guidance: γ = {atom_guidance:g} on the baseline model, training-free "
        "(every particle a proton), on over the noisier 60 % of the trajectory",
        f"- Particle Guidance: γ = {particle_guidance:g} on the baseline model, RBF kernel on the "
        "latents, on while σ_t/α_t ≥ 1",
        f"- sampling: `AtomDDIMPipeline`, {demo['num_inference_steps']} DDIM steps (η = 0), "
        f"{demo['num_samples']} images per method and seed in batches of at most {demo['sample_batch_size']} "
        "(the guidance methods separate the samples within a batch), quantised to 8 bits before scoring",
        f"- device: {settings['device']}",
    ]


def _warmup(method: dict[str, Any]) -> str:
    steps = method.get("warmup_steps") or 0
    return f" (ramped up from 0 over {steps} steps)" if steps else ""


def _training_table(report: dict[str, Any]) -> list[str]:
    header = ["model", *[label for _, label, _ in TRAINING_COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, entry in report["training"].items():
        cells = [model, *[_format(entry[key], decimals) for key, _, decimals in TRAINING_COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final values are means over the last 10 % of the logged steps. The separation loss is λ-free "
        "(the atom model's L_atom, the dispersive model's L_disp); atom distance and importance entropy "
        "are the atom model's.",
    ]
    return lines


def _training_notes(report: dict[str, Any]) -> list[str]:
    """Plain statements when a training-time method sat at a trivial point of its loss."""
    notes = []
    charge = report["attribution"]["mean_abs_charge"]["mean"]
    if report["settings"]["atom_mode"] == "signed" and charge is not None and charge < 0.05:
        notes.append(
            f"**Atom model.** Its particles ended nearly uncharged (mean |q| = {charge:.3f} on its samples). "
            "The roles start uniform (method.md §3), so q = r^p − r^e starts at 0, where the signed energy "
            "(pair weights q_i q_j) and its gradient vanish: a trivial solution of the loss, and the atom "
            "model trains much like the baseline. `--mode repulsive` (pair weights s_i s_j) does not have "
            "that solution."
        )
    dispersive = report["training"].get("dispersive", {}).get("final_separation_loss", {}).get("mean")
    floor = -math.log(report["settings"]["train"]["batch_size"])
    if dispersive is not None and abs(dispersive - floor) < 1e-3:
        notes.append(
            f"**Dispersive model.** Its loss ended at its floor, −log B = {floor:.4f} to within 0.001 (B = the batch): "
            "log mean_ij exp(−‖z_i − z_j‖²/τ) keeps only the i = j terms when the site features of "
            "different samples are far apart compared with τ, and then it has no gradient. The "
            "dispersive model then trains much like the baseline."
        )
    return [line for note in notes for line in ("", note)]


def _attribution(report: dict[str, Any]) -> list[str]:
    """The learned importances against the baselines: the maps, the table of areas, the verdict, the curves."""
    attribution = report["attribution"]
    figures = report.get("figures", {})
    labels, table = attribution["labels"], attribution["table"]
    best_baseline = attribution["best_baseline"]
    per_seed = attribution["per_seed"]
    lines = []
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
        cells += [_format(entry[key], 4) for key in ("deletion_auc", "deletion_gain")]
        cells += [_format(entry[key], 4) for key in ("insertion_auc", "insertion_gain")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"| {labels['random']} (reference) | {_format(random['deletion_auc'], 4)} | 0 | "
        f"{_format(random['insertion_auc'], 4)} | 0 |"
    )
    lines += ["", *_attribution_verdict(attribution)]
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
        f"{_format(attribution['mean_importance'], 3)}, mean |charge| = "
        f"{_format(attribution['mean_abs_charge'], 3)}. At the demo's sizes, on the model's own samples: "
        "`bench/attribution.py` is the benchmark (held-out images, 3 seeds, paired 95 % intervals).",
    ]
    if "attribution_curves" in figures:
        lines += ["", f"![deletion and insertion curves]({figures['attribution_curves']})"]
    return lines


def _attribution_verdict(attribution: dict[str, Any]) -> list[str]:
    """Which method is best on each curve, every baseline that beats the learned importances, and which
    method a user should then prefer."""
    labels, best = attribution["labels"], attribution["best"]
    gain = _mean_gains(attribution["table"])
    lines = [
        "Best on deletion: **"
        + labels[best["deletion"]]
        + f"** (gain {gain['deletion'][best['deletion']]:+.4f}); best on insertion: **"
        + labels[best["insertion"]]
        + f"** (gain {gain['insertion'][best['insertion']]:+.4f})."
    ]
    for curve in CURVES:
        ours = gain[curve]["importance"]
        better = [m for m in [*attribution["methods"][1:], "random"] if gain[curve][m] > ours]
        if better:
            names = " and ".join(f"{labels[m]} ({gain[curve][m]:+.4f})" for m in better)
            lines.append(
                f"On {curve}, {names} beat{'s' if len(better) == 1 else ''} the learned importances ({ours:+.4f})."
            )
    # The advice: a baseline that beats the learned importances on both curves is the better choice here.
    both = [m for m in attribution["methods"][1:] if all(gain[c][m] > gain[c]["importance"] for c in CURVES)]
    if best["deletion"] == best["insertion"] == "importance":
        lines.append("The learned importances have the largest gain on both curves.")
    elif both:
        names = " and ".join(labels[m] for m in both)
        lines.append(
            f"{names[0].upper()}{names[1:]} beat{'s' if len(both) == 1 else ''} the learned importances on both curves: prefer "
            f"{labels[max(both, key=lambda m: gain['deletion'][m] + gain['insertion'][m])]} for "
            "attribution at this site (in this run; `bench/attribution.py` tests whether it holds)."
        )
    else:
        lines.append("No baseline beats the learned importances on both curves.")
    return lines


def _vae(section: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """The VAE section: what ran, its table, the difference atom − baseline, the figure."""
    model, rows = section["model"], section["rows"]
    atom = next(row for row in rows if row["separation"] != "none")
    options = ", ".join(f"{k} = {v}" for k, v in atom["options"].items())
    lines = [
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
                "–" if metrics.get(key) is None else _number(metrics[key], _decimals(key))
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
    if "vae" in figures:
        lines += [
            "",
            f"![VAE reconstructions and prior samples]({figures['vae']})",
            "",
            "Top: held-out images and their reconstructions by each VAE. Below: prior samples of each.",
        ]
    return lines


def _cfg(section: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """The CFG section: what ran, its table, what one seed can and cannot say, the front plot."""
    model, scoring = section["model"], section["scoring"]
    rows = section["rows"]
    lines = [
        f"A class-conditional DDPM (the same base config, v-prediction, label dropout "
        f"{model['label_dropout']:g}, no separation) trained {model['steps']} steps "
        f"({model['train_seconds']:.0f} s), sampled with {section['samples_per_class']} images per class "
        f"and setting, {section['num_inference_steps']} DDIM steps, the same labels and initial noise for "
        f"every setting. Scores are per class against that class's real images on "
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
    if "cfg_front" in figures:
        lines += [
            "",
            f"![classifier-free guidance front]({figures['cfg_front']})",
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


def _timings(report: dict[str, Any]) -> list[str]:
    """Wall and CPU seconds per section: the CPU time is what a section costs an idle machine."""
    timings = report.get("timings")
    if not timings:
        return []
    parts = ", ".join(
        f"{section} {spent['wall']:.0f} s (CPU {spent['cpu']:.0f} s)" for section, spent in timings.items()
    )
    lines = [f"- wall time by section: {parts}; total {report.get('wall_seconds', 0):.0f} s"]
    load = report.get("load_average")
    if load and None not in load.values():  # a busy machine stretches the wall times: say how busy
        lines.append(
            f"- load average (1 min) at the start and the end: {load['start']:.2f}, {load['end']:.2f} "
            f"on {report['machine']['usable_cpus']} usable CPUs"
        )
    return lines


def _machine(report: dict[str, Any]) -> list[str]:
    m, v = report["machine"], report["versions"]
    threads = (
        f"{m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}"
    )
    if m["omp_num_threads"]:
        threads += f", OMP_NUM_THREADS={m['omp_num_threads']}"
    return [
        f"- CPU: {m['cpu']}; {threads}",
        f"- GPU: {m['gpu'] or 'none'}",
        f"- {m['platform']}",
        "- " + ", ".join(f"{name} {version}" for name, version in v.items() if version),
    ]
