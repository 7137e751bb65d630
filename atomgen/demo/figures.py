"""The demo's pictures: sample grids, attribution heat maps, deletion curves, diversity against fidelity,
and the CFG section's front (recall against precision).

Every file is written atomically (:mod:`atomgen.io`). Plots use matplotlib's object API (a ``Figure``
without ``pyplot``, so no global backend state is touched); the grids use PIL.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.grids import save_image_grid
from ..io import write_atomic

__all__ = ["save_grid", "write_figures"]

GRID_COLUMNS = 8
CELL_SIDE = 40  # small images are enlarged (nearest neighbour) to about this side


def write_figures(
    out: Path, report: dict[str, Any], grids: dict[str, torch.Tensor], picture: dict[str, Any]
) -> dict[str, Any]:
    """Write every figure of the report into ``out``; returns their file names, relative to ``out``.

    Args:
        out: the run directory.
        report: what :func:`atomgen.demo.report.build` returned (table, attribution, methods), and
            the CFG section's ``cfg`` entry if it ran.
        grids: images in [0, 1] per method key, for the sample grids.
        picture: ``images``, ``importance`` and ``grid`` of the atom model, for the heat maps.
    """
    files: dict[str, Any] = {"samples": {}}
    for key, images in grids.items():
        name = f"samples-{key}.png"
        save_grid(out / name, images)
        files["samples"][key] = name
    if picture:
        files["attribution"] = "attribution.png"
        _save_attribution(out / files["attribution"], **picture)
    files["deletion"] = "deletion.png"
    _save_figure(out / files["deletion"], _deletion_plot(report["attribution"]["per_seed"]))
    files["diversity_fidelity"] = "diversity-fidelity.png"
    _save_figure(out / files["diversity_fidelity"], _diversity_fidelity_plot(report))
    if "cfg" in report:
        files["cfg_front"] = "cfg-front.png"
        _save_figure(out / files["cfg_front"], _cfg_front_plot(report["cfg"]))
    return files


# ---------------------------------------------------------------------------------------- pictures
def save_grid(path: Path, images: torch.Tensor) -> None:
    """Images ``(N, C, H, W)`` in [0, 1] as a PNG grid, enlarged to about 40 px, white gaps between."""
    save_image_grid(path, images, nrow=GRID_COLUMNS, cell_side=CELL_SIDE)


def _save_attribution(path: Path, images: torch.Tensor, importance: torch.Tensor, grid: tuple) -> None:
    """:func:`atomgen.eval.save_attribution_grid` (which writes to a path) made atomic."""
    from ..eval import save_attribution_grid

    with tempfile.TemporaryDirectory() as tmp:
        drawn = save_attribution_grid(images, importance, grid, Path(tmp) / path.name)
        data = drawn.read_bytes()
    write_atomic(path, lambda file: file.write(data))


# -------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency of the demo
        raise ImportError("the demo's plots need matplotlib: pip install matplotlib") from error
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save_figure(path: Path, figure) -> None:
    write_atomic(path, lambda file: figure.savefig(file, format="png"))


def _deletion_plot(per_seed: list[dict[str, Any]]):
    """Relative drop of d̄ against the deleted fraction: importance order and random order, ± std over seeds."""
    figure = _figure(5.0, 3.6)
    axes = figure.add_subplot()
    fractions = np.asarray(per_seed[0]["fractions"])
    for key, label, colour in (
        ("drop_importance", "by importance", "tab:red"),
        ("drop_random", "at random", "tab:grey"),
    ):
        curves = np.asarray([seed[key] for seed in per_seed])
        mean = curves.mean(0)
        axes.plot(fractions, mean, marker="o", markersize=3, color=colour, label=label)
        if len(curves) > 1:
            std = curves.std(0, ddof=1)
            axes.fill_between(fractions, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel("fraction of each atom's particles deleted")
    axes.set_ylabel("relative drop of the atom distance d̄")
    seeds = f" (mean ± std over {len(per_seed)} seeds)" if len(per_seed) > 1 else ""
    axes.set_title(f"Deletion curves of the atom model{seeds}", fontsize=10)
    axes.legend(frameon=False)
    return figure


def _diversity_fidelity_plot(report: dict[str, Any]):
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


def _cfg_front_plot(section: dict[str, Any]):
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
