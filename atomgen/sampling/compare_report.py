"""The report of ``atomgen compare``: per-seed values of every score, the chosen strengths, the paired
differences to plain CFG at w* and the gaps to CFG's front (:func:`build_report`), as Markdown
(:func:`markdown`) and as the front plot (:func:`plot`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from atomgen.benchmark.report import MACHINE, Series, beyond_ends, cell, front_plot, summary, table
from atomgen.benchmark.stats import AXES, choose_strength, front_gaps, grid_by_seed, grid_end

from .compare_config import CompareConfig, Setting

METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")
PROMPT_METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "dino_distance",
                  "cosine_distance", "clip_score")  # fmt: skip
COLUMNS = tuple(dict.fromkeys((*METRICS, *PROMPT_METRICS)))  # the report's columns, where scored
_FEATURES = {"classifier": "the committed classifier's", "dinov2": "DINOv2", "clip": "CLIP image",
             "inception": "Inception-v3"}  # fmt: skip


def build_report(
    config: CompareConfig,
    grid: dict[float, list[dict[str, float]]],
    w_star: float,
    methods: dict[str, list[dict[str, float]]],
    specs: dict[str, Any],
    axes: Sequence[str] = AXES,
    gain: str = "recall",
) -> dict[str, Any]:
    """The report: per-seed values of every score, w*, the chosen strengths, paired differences to
    plain CFG at w* and the gaps to CFG's front on each of ``axes`` (fidelity, then adherence), with
    ``gain`` the metric the front trades."""
    reference = grid[w_star]

    def row(setting: Setting, rows: list[dict[str, float]], paired: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "setting": setting.name,
            "method": setting.method or "cfg",
            "scale": setting.scale,
        }
        for metric in (m for m in COLUMNS if m in rows[0]):
            values = [r[metric] for r in rows]
            entry[metric] = summary(values, [r[metric] for r in reference] if paired else None)
        return entry

    sweeps: dict[str, list[str]] = {}
    for spec_text, spec in specs.items():
        key = f"{spec.name}{json.dumps(spec.options, sort_keys=True) if spec.options else ''}"
        sweeps.setdefault(key, []).append(spec_text)
    mean = lambda rows: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}  # noqa: E731
    chosen = {}
    for key, members in sweeps.items():
        strengths = {specs[m].scale: m for m in members}
        best = choose_strength(
            {s: mean(methods[m]) for s, m in strengths.items()}, mean(reference), axes, gain
        )
        chosen[key] = {
            "setting": strengths[best],
            "strength": best,
            "grid_end": grid_end(best, list(strengths)),
        }
    front_grid = grid_by_seed(grid)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "axes": list(axes),
        "gain": gain,
        "benchmark_scale": w_star,
        "grid": [row(Setting(w), rows, paired=False) for w, rows in sorted(grid.items())],
        "methods": [
            row(Setting(w_star, m), rows, paired=True) | {"strength": specs[m].scale}
            for m, rows in methods.items()
        ],
        "chosen": chosen,
        "front": {
            Setting(w_star, m).name: {
                axis: gap.to_dict() for axis, gap in front_gaps(front_grid, rows, axes, gain).items()
            }
            for m, rows in methods.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    config = report["config"]
    axes, gain = report.get("axes", AXES), report.get("gain", "recall")
    shown = [m for m in COLUMNS if report["grid"] and m in report["grid"][0]]
    lines = [
        f"# atomgen compare: {config['pipeline']}" + (f" against {config['real']}" if config["real"] else ""),
        "",
        _setup(report),
        "",
        "## The CFG grid",
        "",
        *table(["setting", *shown], [[r["setting"], *(cell(r[m]) for m in shown)] for r in report["grid"]]),
        "",
        f"Benchmark scale w* = {report['benchmark_scale']:g}.",
    ]
    if report["methods"]:
        lines += [
            "",
            "## Methods at w*",
            "",
            *table(
                ["setting", *shown],
                [[r["setting"], *(cell(r[m], diff=True) for m in shown)] for r in report["methods"]],
            ),
            "",
            f"Chosen strengths (the largest {gain} at matched {' and '.join(axes)}): "
            + ", ".join(
                f"{key} → {c['strength']:g}"
                + (f" (at the {c['grid_end']} of its sweep: extend it)" if c["grid_end"] else "")
                for key, c in report["chosen"].items()
            ),
            "",
            "## Against CFG's own front",
            "",
        ]
        body = []
        for name, gaps in report["front"].items():
            for axis in axes:
                gap = gaps[axis]
                other = _interval(gap["other_diff"]) if gap["other_diff"] is not None else "— (one axis)"
                verdict = ("yes" if gap["beats"] else "no") + beyond_ends(gap)
                body.append([name, axis, _interval(gap["gain"]), other, verdict])
        lines += table(["setting", "front on", f"{gain} gain", "other axis Δ", "beats the front"], body)
    if "machine" in report:
        lines += ["", MACHINE.format(**report["machine"])]
    return "\n".join(lines) + "\n"


def _setup(report: dict[str, Any]) -> str:
    """The report's first paragraph: what was sampled and how each score is taken."""
    config, gain = report["config"], report.get("gain", "recall")
    extractor = report.get("extractor", "classifier")
    features = _FEATURES[extractor] + (" (FD_DINOv2 in the FID column)" if extractor == "dinov2" else "")
    paired = (
        "Δ = paired difference to plain CFG at w*, [95 % t-interval over seeds]; an interval containing 0 "
        "is not a result. report.json holds every score's per-seed values."
    )
    if not config.get("prompts"):
        classes = f" of classes {', '.join(map(str, config['classes']))}" if config.get("classes") else ""
        real = f" ({report['real_images']} images)" if "real_images" in report else ""
        judge = report.get("classifier", "the dataset classifier")
        return (
            f"{config['seeds']} seed(s), {config['samples_per_class']} samples per class{classes} per setting; "
            f"the same noise in every setting of a seed. Per-class scores against {config['real']}{real} on "
            f"{features} features, averaged over classes; accuracy = {judge} agrees with the requested label. "
            f"{paired}"
        )
    from atomgen.eval.hub_features import CLIP_ID

    text = (
        f"{config['seeds']} seed(s), {len(config['prompts'])} prompts × {config['per_prompt']} images per "
        "setting; the same noise in every setting of a seed. clip_score = 100 × max(cos, 0) of the CLIP "
        f"image and prompt embeddings ({config.get('clip_weights') or CLIP_ID}), the mean over images: the "
        f"adherence axis. Diversity within each prompt on {_FEATURES[extractor]} features, averaged over "
        "prompts: vendi, and the mean pairwise cosine distance "
        f"({'dino_distance' if extractor == 'dinov2' else 'cosine_distance'})."
    )
    if config["real"]:
        return (
            f"{text} Against {config['real']}: each prompt's samples against that prompt's reference images "
            f"on {features} features (FD, precision, recall, density, coverage; 5 neighbours), averaged over "
            f"prompts. {paired}"
        )
    return (
        f"{text} {paired}\n\n**No reference images (--real): no fidelity axis, no recall.** The front is on "
        f"the CLIP score alone, and its gain, {gain}, is the spread of the images within a prompt, not "
        "diversity against a reference: images scattered off the data raise it too, so this report cannot "
        "show a diversity gain at matched fidelity. Pass --real (a folder of `atomgen sample --prompts` with "
        "reference images of every prompt) for precision and recall."
    )


def _interval(value: dict[str, Any]) -> str:
    from atomgen.benchmark.stats import format_interval

    return format_interval(value["mean"], value["low"], value["high"])


def plot(report: dict[str, Any], path: Path) -> None:
    """The gain (recall) against each axis of the front: CFG's grid as a line, the methods as markers."""
    gain, panels = report.get("gain", "recall"), []
    for axis in report.get("axes", AXES):
        grid = report["grid"]
        series = [Series("CFG", [r[axis]["mean"] for r in grid], [r[gain]["mean"] for r in grid], True,
                         [f"w={r['scale']:g}" for r in grid])]  # fmt: skip
        series += [Series(r["setting"], [r[axis]["mean"]], [r[gain]["mean"]]) for r in report["methods"]]
        panels.append((report["config"]["pipeline"], axis, series))
    front_plot(panels, path, ylabel=gain)


__all__ = ["COLUMNS", "METRICS", "PROMPT_METRICS", "build_report", "markdown", "plot"]
