"""Statistics the benchmarks share: paired differences over seeds with a 95 % t-interval.

bench/ is a folder of scripts, not a package; a script imports this module after putting its own folder
on ``sys.path`` (``python bench/x.py`` does that already; the tests load the scripts by path).
"""

from __future__ import annotations

import statistics


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
