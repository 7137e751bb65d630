"""What the benchmarks' reports share: mean ± std over seeds, paired differences with a 95 % t-interval,
docstring paragraphs as report text, the machine a report was measured on.

bench/ is a folder of scripts, not a package; a script imports this module after putting its own folder
on ``sys.path`` (``python bench/x.py`` does that already; the tests load the scripts by path).
"""

from __future__ import annotations

import platform
import re
import statistics
from typing import Any

import torch


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and standard deviation over seeds (0 for one seed), with the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired_interval(differences: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of per-seed paired differences and its 95 % t-interval (none for one seed)."""
    from scipy import stats

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def format_interval(mean: float, low: float | None, high: float | None) -> str:
    """``+0.012 [+0.004, +0.020]``, or the mean alone with a note when one seed gives no interval."""
    return f"{mean:+.3f} " + (f"[{low:+.3f}, {high:+.3f}]" if low is not None else "(one seed: no interval)")


def paragraph(doc: str, heading: str) -> str:
    """The paragraph of ``doc`` that starts with ``**heading**``, without it, as one line of Markdown (reST
    roles and literals as code): a benchmark's report quotes its own docstring, so the two never differ."""
    text = doc.split(f"**{heading}** ")[1].split("\n\n")[0]
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`").replace("\n", " ")


def machine(device: torch.device) -> dict[str, Any]:
    """Where a benchmark ran: the platform, the device, torch's threads and version (a report's footer:
    ``"Machine: {platform}, {device}, {threads} threads, torch {torch}."``)."""
    return {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "threads": torch.get_num_threads(),
    }
