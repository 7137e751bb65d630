"""The statistics of a guidance benchmark: paired 95 % t-intervals over seeds, the rule that picks the
benchmark scale ``w*``, the rule that picks a method's strength, and the gap to CFG's own front on two axes.

Every function takes per-seed values, paired by position (seed ``k`` of one setting against seed ``k``
of another: the same model, the same noise), so ``bench/cfg.py`` and ``atomgen compare`` reach the same
numbers from the same scores. A *row* is one seed's scores of one setting: a mapping metric → value with
at least ``precision``, ``recall`` and ``accuracy`` (class accuracy, the adherence axis).

Example:
    >>> from atomgen.benchmark.stats import paired_interval, pareto_set
    >>> paired_interval([0.02, 0.03, 0.04]).mean
    0.03
    >>> pareto_set([(0.95, 0.80), (0.97, 0.75), (0.94, 0.66)])
    [(0.95, 0.8), (0.97, 0.75)]
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

Row = Mapping[str, float]

ACCURACY_RISE = 0.001  # a smaller rise is 2 of 2,000 samples: saturation (0.999 → 1.000), not guidance
PRECISION_SLACK = 0.01  # "matched precision": within 0.01 of the reference
ACCURACY_SLACK = 0.01  # "matched adherence": class accuracy at most 1 point lower
OTHER_AXIS_SLACK = 0.01  # beating the front on one axis: the other no worse than the front's by more
AXES = ("precision", "accuracy")  # fidelity and adherence: the two axes of CFG's front


class Interval(NamedTuple):
    """A mean over seeds and its 95 % t-interval (``low``/``high`` are ``None`` for one seed)."""

    mean: float
    low: float | None
    high: float | None

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above 0: a result (one seed never is)."""
        return self.low is not None and self.low > 0

    def to_dict(self) -> dict[str, float | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of per-seed paired differences and its t-interval over seeds.

    Args:
        differences: one value per seed, e.g. a method's recall minus plain CFG's on the same seed.
        confidence: the interval's coverage.

    Raises:
        ValueError: no differences.
    """
    from scipy import stats  # scikit-learn, a dependency, brings scipy

    if not differences:
        raise ValueError("paired_interval needs at least one per-seed difference, got none")
    values = [float(d) for d in differences]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None)
    quantile = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1))
    half = quantile * statistics.stdev(values) / len(values) ** 0.5
    return Interval(mean, mean - half, mean + half)


def paired_differences(rows: Sequence[Row], reference: Sequence[Row], metric: str) -> list[float]:
    """``rows[k][metric] − reference[k][metric]`` for the seeds of ``rows`` (``reference`` may have more:
    a setting scored on the first seeds only is paired with those)."""
    if len(reference) < len(rows):
        raise ValueError(f"{len(rows)} seeds to pair with a reference of {len(reference)} seeds")
    return [float(a[metric]) - float(b[metric]) for a, b in zip(rows, reference, strict=False)]


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and standard deviation over seeds (0 for one seed), with the per-seed values themselves."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def format_interval(
    mean: float | tuple[float, float | None, float | None],
    low: float | None = None,
    high: float | None = None,
) -> str:
    """``+0.012 [+0.004, +0.020]``, or the mean alone with a note when one seed gives no interval; takes
    an :class:`Interval` (or any ``(mean, low, high)``) as its first argument too."""
    if isinstance(mean, tuple):
        mean, low, high = mean
    return f"{mean:+.3f} " + (f"[{low:+.3f}, {high:+.3f}]" if low is not None else "(one seed: no interval)")


# ------------------------------------------------------------------------------------------ the rules
def benchmark_scale(accuracy: Mapping[float, float], rise: float = ACCURACY_RISE) -> float:
    """The benchmark scale ``w*``: the largest ``w`` at which the mean class accuracy still rises over the
    previous ``w`` of the grid by more than ``rise``.

    Args:
        accuracy: mean class accuracy by guidance scale ``w`` (any order).
        rise: the smallest rise that counts (at saturation, 0.999 → 1.000 is noise).
    """
    scales = sorted(accuracy)
    chosen = scales[0]
    for previous, scale in itertools.pairwise(scales):
        if accuracy[scale] <= accuracy[previous] + rise:
            break
        chosen = scale
    return chosen


def admissible(candidate: Row, reference: Row) -> bool:
    """Matched fidelity: precision within :data:`PRECISION_SLACK` of the reference's, class accuracy at
    most :data:`ACCURACY_SLACK` lower (means over seeds)."""
    return (
        candidate["precision"] >= reference["precision"] - PRECISION_SLACK
        and candidate["accuracy"] >= reference["accuracy"] - ACCURACY_SLACK
    )


def choose_strength(candidates: Mapping[float, Row], reference: Row) -> float:
    """The strength rule: among the strengths whose mean scores are :func:`admissible` against plain CFG
    at the same ``w`` (``reference``), the one with the largest mean recall; none admissible: the one with
    the highest precision (fidelity first, never the most diverse)."""
    passing = [s for s, scores in candidates.items() if admissible(scores, reference)]
    if passing:
        return max(passing, key=lambda s: candidates[s]["recall"])
    return max(candidates, key=lambda s: candidates[s]["precision"])


def grid_end(chosen: float, grid: Sequence[float]) -> str | None:
    """``"top"`` or ``"bottom"`` when ``chosen`` is at that end of a sweep of several values (the sweep
    did not bracket its optimum: extend it), else ``None``."""
    if len(grid) < 2:
        return None
    if chosen == max(grid):
        return "top"
    return "bottom" if chosen == min(grid) else None


def recovery(
    unguided: Sequence[Row],
    cfg: Sequence[Row],
    methods: Mapping[str, Sequence[Row]],
    peers: Sequence[str],
    prefix: str = "atom",
) -> dict[str, Any]:
    """For every method whose name starts with ``prefix``, run at ``w*``: the share of the recall CFG lost
    from ``w = 1`` to ``w*`` that it recovers over plain CFG, whether its fidelity is matched
    (:func:`admissible`), and its paired recall difference to each of ``peers`` that ran, with the
    precision difference that says whether the two were matched (±0.01). A method scored on fewer seeds
    is compared on its seeds only: the first ones, paired.

    Args:
        unguided: per seed, plain CFG's row at ``w = 1``.
        cfg: per seed, plain CFG's row at ``w*``.
        methods: method name → its per-seed rows at ``w*``.
        peers: the methods each one is compared with.
        prefix: which methods get a row.

    Returns:
        ``recall_lost`` (on all seeds), and per method ``recovered`` (``None`` when CFG lost no recall on
        its seeds), ``matched`` and ``peers`` (peer → ``recall`` interval dict and ``precision_diff``).
    """

    def mean(rows: Sequence[Row], metric: str) -> float:
        return statistics.fmean(float(row[metric]) for row in rows)

    def lost_on(seeds: int) -> float:
        return mean(unguided[:seeds], "recall") - mean(cfg[:seeds], "recall")

    result: dict[str, Any] = {"recall_lost": lost_on(len(cfg))}
    for name in (m for m in methods if m.startswith(prefix)):
        mine, seeds = methods[name], len(methods[name])
        means = {m: mean(mine, m) for m in ("precision", "recall", "accuracy")}
        plain = {m: mean(cfg[:seeds], m) for m in ("precision", "recall", "accuracy")}
        compared = {
            peer: {
                "recall": paired_interval(paired_differences(mine, methods[peer], "recall")).to_dict(),
                "precision_diff": means["precision"] - mean(methods[peer][:seeds], "precision"),
            }
            for peer in peers
            if peer in methods
        }
        lost = lost_on(seeds)
        result[name] = {
            "recovered": (means["recall"] - plain["recall"]) / lost if lost > 0 else None,
            "matched": admissible(means, plain),
            "peers": compared,
        }
    return result


# ------------------------------------------------------------------------------------------ the front
def pareto_set(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no other point beats on both coordinates (higher is better on both), by
    increasing first coordinate; of equal points one is kept."""
    return [points[i] for i in _pareto_indices(points)]


def _pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    kept: list[int] = []
    for i in order:
        if not kept or points[i][1] > points[kept[-1]][1]:
            kept.append(i)
    return kept[::-1]


def front_at(grid: Sequence[Row], value: float, axis: str, other: str) -> tuple[float, float, bool]:
    """CFG's front of one seed at ``axis = value``: its recall and its ``other`` axis there.

    The front is the seed's grid points (one row per ``w``) that no other beats on ``axis`` and recall,
    joined in order of the axis (along ``w``, as guidance raises it); a value between two of them takes
    recall and the other axis at the same fraction of the segment, and beyond the ends they are held.

    Returns:
        recall, the other axis, and whether ``value`` lies within the front's range.
    """
    indices = _pareto_indices([(row[axis], row["recall"]) for row in grid])
    points = [(grid[i][axis], grid[i]["recall"], grid[i][other]) for i in indices]
    low, high = points[0], points[-1]
    if value <= low[0] or value >= high[0]:
        end = low if value <= low[0] else high
        return end[1], end[2], low[0] <= value <= high[0]
    for left, right in itertools.pairwise(points):
        if left[0] <= value <= right[0]:
            fraction = (value - left[0]) / (right[0] - left[0])
            return (
                left[1] + fraction * (right[1] - left[1]),
                left[2] + fraction * (right[2] - left[2]),
                True,
            )
    raise AssertionError("unreachable: the value lies within the front's range")


def grid_by_seed(by_scale: Mapping[float, Sequence[Row]]) -> list[list[Row]]:
    """Plain CFG's rows regrouped per seed along ``w`` (``w → per-seed rows`` in, what :func:`front_gap`
    takes out)."""
    scales = sorted(by_scale)
    return [[by_scale[w][seed] for w in scales] for seed in range(len(by_scale[scales[0]]))]


@dataclass(frozen=True)
class FrontGap:
    """A setting against CFG's front on one axis, paired by seed.

    Attributes:
        axis: the axis the front is drawn on (``precision`` or ``accuracy``).
        other: the other axis.
        gain: recall minus the front's recall at the setting's own value of ``axis``.
        other_diff: the setting's ``other`` minus the front's there.
        gains: the per-seed values of ``gain``.
        other_diffs: the per-seed values of ``other_diff``.
        outside: seeds on which the setting's ``axis`` lies beyond the front's range (its ends held).
    """

    axis: str
    other: str
    gain: Interval
    other_diff: Interval
    gains: list[float]
    other_diffs: list[float]
    outside: int

    @property
    def beats(self) -> bool:
        """Above the front on ``axis``: the gain's interval clear of zero and the other axis no worse
        than the front's by more than :data:`OTHER_AXIS_SLACK` (mean over seeds)."""
        return self.gain.above_zero and self.other_diff.mean >= -OTHER_AXIS_SLACK

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "other": self.other,
            "gain": self.gain.to_dict(),
            "other_diff": self.other_diff.to_dict(),
            "gains": self.gains,
            "other_diffs": self.other_diffs,
            "outside": self.outside,
            "beats": self.beats,
        }


def front_gap(grid: Sequence[Sequence[Row]], rows: Sequence[Row], axis: str) -> FrontGap:
    """A setting's recall gain over CFG's front on ``axis``, seed by seed.

    Args:
        grid: per seed, plain CFG's rows along its ``w`` grid (in order of ``w``).
        rows: per seed, the setting's row; the first ``len(rows)`` seeds of ``grid`` are paired with it.
        axis: ``"precision"`` or ``"accuracy"``; the other of :data:`AXES` is the one held.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if len(grid) < len(rows):
        raise ValueError(f"{len(rows)} seeds to pair with a CFG grid of {len(grid)} seeds")
    other = AXES[1 - AXES.index(axis)]
    gains, other_diffs, outside = [], [], 0
    for seed_grid, row in zip(grid, rows, strict=False):
        recall, other_value, inside = front_at(seed_grid, row[axis], axis, other)
        gains.append(float(row["recall"]) - recall)
        other_diffs.append(float(row[other]) - other_value)
        outside += not inside
    return FrontGap(
        axis, other, paired_interval(gains), paired_interval(other_diffs), gains, other_diffs, outside
    )


def front_gaps(grid: Sequence[Sequence[Row]], rows: Sequence[Row]) -> dict[str, FrontGap]:
    """:func:`front_gap` on both axes, keyed by axis."""
    return {axis: front_gap(grid, rows, axis) for axis in AXES}


__all__ = [
    "ACCURACY_RISE",
    "ACCURACY_SLACK",
    "AXES",
    "OTHER_AXIS_SLACK",
    "PRECISION_SLACK",
    "FrontGap",
    "Interval",
    "Row",
    "admissible",
    "benchmark_scale",
    "choose_strength",
    "format_interval",
    "front_at",
    "front_gap",
    "front_gaps",
    "grid_by_seed",
    "grid_end",
    "paired_differences",
    "paired_interval",
    "pareto_set",
    "recovery",
    "spread",
]
