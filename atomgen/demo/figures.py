"""The demo's pictures: sample grids, attribution maps (learned beside the best baseline), deletion and
insertion curves, diversity against fidelity, the CFG section's front (recall against precision) and the
VAE section's reconstructions and prior samples. Each section draws its own with these functions; this
module knows nothing of the sections.

Every file is written atomically (:mod:`atomgen.io`). Plots use matplotlib's object API (a ``Figure``
without ``pyplot``, so no global backend state is touched); the grids use PIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.grids import image_grid, save_image_grid
from ..io import write_atomic

__all__ = [
    "attribution_curves_plot",
    "attribution_plot",
    "cfg_front_plot",
    "diversity_fidelity_plot",
    "save_figure",
    "save_grid",
    "vae_plot",
]

GRID_COLUMNS = 8
CELL_SIDE = 40  # small images are enlarged (nearest neighbour) to about this side


# ---------------------------------------------------------------------------------------- pictures
def save_grid(path: Path, images: torch.Tensor) -> None:
    """Images ``(N, C, H, W)`` in [0, 1] as a PNG grid, enlarged to about 40 px, white gaps between."""
    save_image_grid(path, images, nrow=GRID_COLUMNS, cell_side=CELL_SIDE)


def _strip(images: torch.Tensor, columns: int, side: int = CELL_SIDE) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [0, 1] as one RGB array for ``imshow``, ``columns`` per row."""
    return image_grid(images, nrow=columns, cell_side=side).permute(1, 2, 0).numpy()


def _overlays(images: torch.Tensor, scores: torch.Tensor, grid: tuple, alpha: float = 0.6) -> torch.Tensor:
    """Each image with its map laid over it: scores ``(B, n)`` on the particle grid, scaled to [0, 1] per
    image (the methods have different units; the curves use the order only), upsampled bilinearly to
    the image and coloured black → red → yellow → white."""
    from matplotlib import colormaps

    from ..eval import attribution_maps

    low, high = scores.min(1, keepdim=True).values, scores.max(1, keepdim=True).values
    scaled = (scores - low) / (high - low).clamp_min(1e-12)
    side = max(1, CELL_SIDE // max(images.shape[-2:])) * max(images.shape[-2:])
    heat = attribution_maps(scaled, grid, (side, side))[:, 0].numpy()
    colour = torch.from_numpy(colormaps["hot"](heat)[..., :3]).permute(0, 3, 1, 2).float()
    grey = torch.nn.functional.interpolate(images.float(), size=(side, side), mode="nearest")
    return (1 - alpha) * grey.expand(-1, 3, -1, -1) + alpha * colour


# -------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency of the demo
        raise ImportError("the demo's plots need matplotlib: pip install matplotlib") from error
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(path: Path, figure) -> None:
    write_atomic(path, lambda file: figure.savefig(file, format="png"))


def attribution_plot(maps: dict[str, Any], labels: dict[str, str]):
    """Three rows: the samples, the learned importance maps, the best baseline's maps."""
    images = maps["images"]
    rows = [("samples", images)]
    rows += [(labels[m], _overlays(images, scores, maps["grid"])) for m, scores in maps["maps"].items()]
    figure = _figure(1.0 + 0.55 * len(images), 0.75 * len(rows) + 0.4)
    for index, (label, row) in enumerate(rows):
        axes = figure.add_subplot(len(rows), 1, index + 1)
        axes.imshow(_strip(row, len(images)), interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    return figure


def attribution_curves_plot(attribution: dict[str, Any]):
    """Deletion and insertion curves of the learned importances, the best baseline and random orders;
    mean ± std over seeds."""
    per_seed, labels = attribution["per_seed"], attribution["labels"]
    best = attribution["best_baseline"]
    figure = _figure(9.0, 3.6)
    panels = (
        ("drop", "deletion: relative drop of d̄", "fraction of each atom's particles deleted"),
        ("recovery", "insertion: relative recovery of d̄", "fraction of each atom's particles inserted"),
    )
    lines = (
        ("importance", "importance", labels["importance"], "tab:red"),
        (best, best, f"{labels[best]} (best baseline)", "tab:blue"),
        ("random", "importance", "random orders (their mean)", "tab:grey"),
    )
    fractions = np.asarray(per_seed[0]["methods"]["importance"]["fractions"])
    for index, (curve, ylabel, xlabel) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        for kind, method, label, colour in lines:
            key = f"{curve}_{'random' if kind == 'random' else 'importance'}"
            curves = np.asarray([seed["methods"][method][key] for seed in per_seed])
            mean = curves.mean(0)
            axes.plot(fractions, mean, marker="o", markersize=3, color=colour, label=label)
            if len(curves) > 1:
                std = curves.std(0, ddof=1)
                axes.fill_between(fractions, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        axes.axhline(0.0, color="black", linewidth=0.5)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if index == 0:
            axes.legend(fontsize=7, frameon=False)
    seeds = f", mean ± std over {len(per_seed)} seeds" if len(per_seed) > 1 else ""
    figure.suptitle(
        f"Attribution curves of the atom model (masking reference: the atom's {attribution['reference']}"
        f"{seeds}); higher is better",
        fontsize=9,
    )
    return figure


def vae_plot(pictures: dict[str, Any]):
    """Held-out images above their reconstructions by each VAE; below, each VAE's prior samples."""
    models = list(pictures["reconstructions"])
    figure = _figure(9.0, 4.8)
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.0, 1.3])
    rows = [("held out", pictures["originals"])] + [(m, pictures["reconstructions"][m]) for m in models]
    for index, (label, images) in enumerate(rows):
        axes = top.add_subplot(len(rows), 1, index + 1)
        axes.imshow(_strip(images, len(images), side=28), interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    top.suptitle("held-out images and their reconstructions (posterior mean)", fontsize=9)
    for index, model in enumerate(models):
        axes = bottom.add_subplot(1, len(models), index + 1)
        axes.imshow(_strip(pictures["samples"][model], GRID_COLUMNS, side=28), interpolation="nearest")
        axes.set_axis_off()
        axes.set_title(f"{model}: prior samples", fontsize=9)
    return figure


def diversity_fidelity_plot(report: dict[str, Any]):
    """Two panels, fidelity (precision) on x: recall and Vendi on y; error bars are std over seeds."""
    figure = _figure(9.0, 3.8)
    panels = (("recall", "recall (diversity) ↑"), ("vendi", "Vendi score (diversity) ↑"))
    markers = "osD^v"  # hollow, and smaller for each later method: coinciding methods show as rings
    for index, (key, ylabel) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        for number, method in enumerate(report["methods"]):
            entry = report["table"][method["key"]]
            x, y = entry["precision"], entry[key]
            if x["mean"] is None or y["mean"] is None:
                continue
            axes.errorbar(
                x["mean"],
                y["mean"],
                xerr=x["std"],
                yerr=y["std"],
                marker=markers[number % len(markers)],
                markersize=13 - 2 * number,
                markerfacecolor="none",
                markeredgewidth=1.5,
                capsize=3,
                linestyle="none",
                label=method["label"],
            )
        reference = report["reference"].get(key)
        if reference is not None:
            axes.axhline(reference, color="black", linestyle="--", linewidth=0.8, label="real data")
        axes.set_xlabel("precision (fidelity) ↑")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if index == 1:
            axes.legend(fontsize=7, frameon=False, loc="best")
    extractor = report["scoring"]["features"]["extractor"]
    figure.suptitle(f"Diversity against fidelity ({extractor} features)", fontsize=10)
    return figure


def cfg_front_plot(section: dict[str, Any]):
    """Recall against precision: plain CFG as a line through its ``w`` grid, the guidances as markers."""
    figure = _figure(5.0, 3.8)
    axes = figure.add_subplot()
    grid = [row for row in section["rows"] if row["method"] == "cfg"]
    axes.plot(
        [row["precision"] for row in grid],
        [row["recall"] for row in grid],
        marker="o",
        color="tab:grey",
        label="plain CFG",
    )
    for row in grid:
        axes.annotate(
            f"w = {row['w']:g}",
            (row["precision"], row["recall"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    markers = {"atom-guidance": ("s", "tab:red"), "feature-guidance": ("D", "tab:blue")}
    for row in section["rows"]:
        if row["method"] in markers:
            marker, colour = markers[row["method"]]
            axes.plot(
                row["precision"],
                row["recall"],
                marker=marker,
                markersize=9,
                markerfacecolor="none",
                markeredgewidth=1.5,
                color=colour,
                linestyle="none",
                label=f"{row['label']}, γ = {row['strength']:g} (w = {row['w']:g})",
            )
    axes.set_xlabel("precision (fidelity) ↑")
    axes.set_ylabel("recall (diversity) ↑")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, frameon=False, loc="best")
    axes.set_title("Classifier-free guidance (per class, mean over classes; one seed)", fontsize=9)
    return figure
