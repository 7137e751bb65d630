"""The report writer the benchmarks share: per-seed summaries for the JSON, Markdown tables and cells,
the front plot, the machine a report was measured on, and the atomic writing of ``<stem>.{json,md,png}``.

A benchmark builds one JSON-able ``report`` dict, in which every score keeps its per-seed ``values``
beside its mean, std and paired interval (:func:`summary`), so that any interval can be recomputed;
renders it to Markdown with :func:`table` and :func:`cell`; and writes both, with its figure, through
:func:`write_reports`.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomgen.benchmark.stats import format_interval, paired_interval, spread


def summary(values: Sequence[float], reference: Sequence[float] | None = None) -> dict[str, Any]:
    """Mean, std and per-seed ``values`` of one score; with ``reference`` (the same score of the setting
    compared against, on the same seeds, possibly more), also the paired difference ``diff`` with its
    95 % interval ``low``/``high``.

    Example:
        >>> round(summary([0.5, 0.7], reference=[0.4, 0.5])["diff"], 6)
        0.15
    """
    entry = spread(values)
    if reference is not None:
        mean, low, high = paired_interval([a - b for a, b in zip(values, reference, strict=False)])
        entry |= {"diff": mean, "low": low, "high": high}
    return entry


def cell(value: dict[str, Any], spec: str = ".3f", diff: bool = False) -> str:
    """``mean ± std`` of a :func:`summary` (the mean alone, marked, for one seed); with ``diff``, its
    paired difference below it."""
    one_seed = len(value.get("values", ())) == 1  # a spread of one value is not 0: there is none
    text = f"{value['mean']:{spec}}" + (" (one seed)" if one_seed else f" ± {value['std']:{spec}}")
    if diff and "diff" in value:
        text += f"<br>Δ {format_interval(value['diff'], value['low'], value['high'])}"
    return text


def beyond_ends(gap: dict[str, Any]) -> str:
    """A note to a front verdict: the seeds beyond the ends of CFG's front (``FrontGap.to_dict``)."""
    ends = [f"{gap[end]} seed(s) {end}" for end in ("below", "above") if gap[end]]
    return f" ({', '.join(ends)} its range)" if ends else ""


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def paragraph(doc: str, heading: str) -> str:
    """The paragraph of ``doc`` that starts with ``**heading**``, without it, as one line of Markdown (reST
    roles and literals as code): a benchmark's report quotes its own docstring, so the two never differ."""
    text = doc.split(f"**{heading}** ")[1].split("\n\n")[0]
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`").replace("\n", " ")


def machine(device: Any) -> dict[str, Any]:
    """Where a benchmark ran (a ``torch.device``): the platform, the device, torch's threads and version,
    for the footer ``"Machine: {platform}, {device}, {threads} threads, torch {torch}."``."""
    import torch

    return {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "threads": torch.get_num_threads(),
    }


MACHINE = "Machine: {platform}, {device}, {threads} threads, torch {torch}."


def setup_lines(report: dict[str, Any]) -> list[str]:
    """The held-out split, the machine and the overrides every model shared, as report lines."""
    lines = [f"Held-out images: {report['split']}", "", MACHINE.format(**report["machine"])]
    if report.get("set"):
        lines += ["", "Every model also with: " + ", ".join(f"`{o}`" for o in report["set"]) + "."]
    return lines


@dataclass
class Series:
    """One curve or set of markers of a plot panel: ``x``/``y`` means, each point optionally labelled."""

    name: str
    x: list[float]
    y: list[float]
    line: bool = False  # a front (joined, in order) rather than markers
    labels: list[str] = field(default_factory=list)


def front_plot(
    panels: Sequence[tuple[str, str, Sequence[Series]]], path: Path, ylabel: str = "recall"
) -> None:
    """One panel per ``(title, x label, series)``, side by side, written atomically as PNG to ``path``;
    nothing is written without a panel."""
    if not panels:
        return
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(panels), 4.5))
    for index, (title, xlabel, series) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for one in series:
            axes.plot(one.x, one.y, "-o" if one.line else "x", label=one.name, markersize=4)
            for x, y, label in zip(one.x, one.y, one.labels, strict=False):
                axes.annotate(label, (x, y), fontsize=6)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axes.legend(fontsize=6)
    figure.tight_layout()
    save_figure(figure, path)


def save_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """A matplotlib ``Figure`` as PNG, written atomically."""
    from atomgen.io import write_atomic

    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=dpi))


def write_reports(
    report: dict[str, Any],
    stem: str,
    folders: Iterable[Path | None],
    markdown: Callable[[dict[str, Any]], str],
    figure: Callable[[Path], None] | None = None,
    figure_suffix: str = ".png",
) -> str:
    """``<stem>.json``, ``<stem>.md`` and the figure ``<stem><figure_suffix>`` (drawn by ``figure(path)``)
    into every folder given (``None`` skipped), atomically.

    Returns:
        The Markdown.
    """
    from atomgen.io import write_json, write_text

    text = markdown(report)
    for folder in filter(None, folders):
        write_json(folder / f"{stem}.json", report)
        write_text(folder / f"{stem}.md", text)
        if figure is not None:
            figure(folder / f"{stem}{figure_suffix}")
    return text


__all__ = [
    "MACHINE",
    "Series",
    "beyond_ends",
    "cell",
    "front_plot",
    "machine",
    "paragraph",
    "save_figure",
    "summary",
    "table",
    "write_reports",
]
