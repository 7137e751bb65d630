"""The DDPM section's part of ``report.md``: what ran, the table, how to read it, each method against the
baseline, the setup, the trainings and the sample grids.

:func:`markdown` renders the entries that :func:`atomgen.demo.ddpm.summary` wrote into ``report.json``;
nothing here measures anything, and every λ, γ and τ it states is what the run used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .scoring import decimals_of, format_entry, number

__all__ = ["TRAINING_COLUMNS", "markdown"]

TRAINING_COLUMNS = (  # key in report.json, header, decimals
    ("train_seconds", "train s", 0),
    ("final_task_loss", "task loss", 4),
    ("final_separation_loss", "separation loss", 4),
    ("final_atom_distance", "atom distance d̄", 3),
    ("final_importance_entropy", "importance entropy", 3),
)


def markdown(report: dict[str, Any]) -> list[str]:
    """The DDPM section of ``report.md``, from the whole report (its settings, seeds and figures too)."""
    settings, scoring = report["settings"], report["scoring"]
    demo, dataset, seeds = settings["demo"], settings["dataset"], report["seeds"]
    lines = [
        f"A DDPM on {dataset['name']} ({dataset['images']} images of "
        f"{'×'.join(map(str, dataset['image_shape'][1:]))}), trained three times with the "
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
    inception = "" if demo["inception"] else "; not Inception, so FID is not comparable with published values"
    lines += [
        "",
        "Higher diversity is not better without bound: noise is diverse too. Read Vendi, LPIPS, recall and "
        "coverage together with precision and density (fidelity), and against the real data's own Vendi "
        "and LPIPS in the reference row. FID and KID mix both: they fall when the samples match the real "
        "distribution in quality *and* spread.",
        "",
        f"- features for FID, KID, precision, recall, density, coverage, Vendi: "
        f"**{scoring['features']['extractor']}** ({scoring['features']['preprocessing']}){inception}",
        f"- LPIPS: {scoring['lpips']['extractor']} ({scoring['lpips']['preprocessing']})",
        f"- KID: {scoring['kid']['num_subsets']} subsets of {scoring['kid']['subset_size']}; precision, "
        f"recall, density, coverage with k = {scoring['prdc_k']}",
    ]
    if "classifier" in scoring:
        lines.append(f"- modes and class KL: classes predicted by {scoring['classifier']}")
    lines += ["", "## Against the baseline", "", *_comparison(report)]
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
    lines += ["", "## Setup", "", *_setup(report)]
    lines += ["", "## Training", "", *_training_table(report), *_training_notes(report)]
    samples = figures.get("samples", {})
    if samples:
        lines += ["", f"## Samples (seed {seeds[0]}, the same initial noise for every method)", ""]
        labels = {m["key"]: m["label"] for m in report["methods"]}
        for key, file in samples.items():
            lines += [f"**{labels.get(key, key)}**", "", f"![{key}]({file})", ""]
        lines.pop()
    return lines


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


def _results_table(report: dict[str, Any]) -> list[str]:
    columns = report["columns"]
    arrows = {"lower": "↓", "higher": "↑"}
    header = ["method", *[f"{c['label']} {arrows[c['better']]}" for c in columns], "train s", "sample s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in report["methods"]:
        entry = report["table"][method["key"]]
        label = method["label"] + (f", γ = {method['strength']:g}" if method["strength"] is not None else "")
        train = format_entry(entry["train_seconds"], 0) if method["kind"] == "training" else "(baseline's)"
        cells = [label, *[format_entry(entry[c["key"]], decimals_of(c["key"])) for c in columns], train]
        cells.append(format_entry(entry["sample_seconds"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    reference = report["reference"]
    cells = ["real data (reference)"]
    for column in columns:
        value = reference.get(column["key"])
        cells.append("–" if value is None else number(value, decimals_of(column["key"])))
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
            decimals = decimals_of(column["key"])
            if number(ours["mean"], decimals) == number(theirs["mean"], decimals):
                group = "same"
            elif several and abs(delta) <= noise:
                group = "within seed noise"
            else:
                group = "better" if (delta < 0) == (column["better"] == "lower") else "worse"
            groups[group].append(f"{column['label']} ({number(delta, decimals, sign=True)})")
        parts = [f"{name}: {', '.join(items)}" for name, items in groups.items() if items]
        lines.append(f"- **{method['label']}** — " + "; ".join(parts))
    noise = (
        ", and a difference no larger than the larger of the two standard deviations is called noise."
        if several
        else " (one seed: no noise estimate)."
    )
    lines += [
        "",
        "Differences are method − baseline, in the columns' units; *better* and *worse* follow each column's "
        "direction, *same* means equal at the precision shown" + noise,
    ]
    return lines


def _setup(report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    demo, model, train = settings["demo"], settings["model"], settings["train"]
    # Every λ, γ and τ below is what the run used (ddpm.method_settings), never a default restated here.
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
        cells = [model, *[format_entry(entry[key], decimals) for key, _, decimals in TRAINING_COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final values are means over the last 10 % of the logged steps. The separation loss is λ-free "
        "(the atom model's L_atom, the dispersive model's L_disp); atom distance and importance entropy "
        "are the atom model's.",
    ]
    return lines


def _training_notes(report: dict[str, Any]) -> list[str]:
    """A plain statement when Dispersive Loss sat at the trivial point of its loss (the atom model's is
    stated by the attribution section, which measures its charges)."""
    dispersive = report["training"].get("dispersive", {}).get("final_separation_loss", {}).get("mean")
    floor = -math.log(report["settings"]["train"]["batch_size"])
    if dispersive is None or abs(dispersive - floor) >= 1e-3:
        return []
    return [
        "",
        f"**Dispersive model.** Its loss ended at its floor, −log B = {floor:.4f} to within 0.001 (B = the "
        "batch): log mean_ij exp(−‖z_i − z_j‖²/τ) keeps only the i = j terms when the site features of "
        "different samples are far apart compared with τ, and then it has no gradient. The dispersive model "
        "then trains much like the baseline.",
    ]
