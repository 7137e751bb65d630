"""The statistics of a guidance benchmark: paired 95 % t-intervals over seeds, the rule that picks the
benchmark scale ``w*``, the rule that picks a method's strength, and the gap to CFG's own front on two axes.

Every function takes per-seed values, paired by position (seed ``k`` of one setting against seed ``k``
of another: the same model, the same noise), so ``bench/cfg.py`` and ``atomgen compare`` reach the same
numbers from the same scores. A *row* is one seed's scores of one setting: a mapping metric → value with
at least the front's axes and its gain metric. By default (:data:`AXES`, ``gain="recall"``) those are
``precision`` (fidelity), ``accuracy`` (class accuracy, the adherence axis) and ``recall``; a
prompt-conditioned pipeline has the CLIP score as its adherence axis (:data:`PROMPT_AXES`), and without
reference images no fidelity axis at all (``axes=("clip_score",)``, the gain then a spread within a prompt).

Example:
    >>> from atomgen.benchmark.stats import paired_interval, pareto_set
    >>> paired_interval([0.02, 0.03, 0.04]).mean
    0.03
    >>> pareto_set([(0.95, 0.80), (0.97, 0.75), (0.94, 0.66)])
    [(0.95, 0.8), (0.97, 0.75)]
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

Row = Mapping[str, float]

ACCURACY_RISE = 0.001  # a smaller rise is 2 of 2,000 samples: saturation (0.999 → 1.000), not guidance
PRECISION_SLACK = 0.01  # "matched precision": within 0.01 of the reference
ACCURACY_SLACK = 0.01  # "matched adherence": class accuracy at most 1 point lower
AXES = ("precision", "accuracy")  # fidelity and adherence: the two axes of CFG's front
# The CLIP score (100 × cosine) is on a 0–100 scale, and its useful range is narrow: on Stable Diffusion
# with CLIP ViT-L/14, guidance over the usual grid (w from 1.5 to 8) moves it by about 5 points
# (≈ 26 → 31, as published guidance curves report it; not measured by this project), where class
# accuracy moves by about 0.1 on this project's CFG benchmarks (≈ 0.9 → 1.0).
# Its thresholds keep the proportions of class accuracy's to that range, and stay above the noise of a
# mean over the images of a compare run:
# - a rise of 0.1 point: a single image's CLIP score spreads over about 3–4 points, so the mean over
#   1,000 images (100 prompts × 10) has a standard error of about 0.1; a smaller rise between two w of
#   the grid is saturation, not guidance (as 0.999 → 1.000 is for accuracy);
# - a slack of 0.5 point: a tenth of the range guidance spans, as 0.01 is of accuracy's 0.1; a method
#   that costs more CLIP score than that has traded prompt adherence for its diversity.
CLIP_SCORE_RISE = 0.1
CLIP_SCORE_SLACK = 0.5
PROMPT_AXES = ("precision", "clip_score")  # a prompt pipeline's front, with reference images per prompt
RISES = {"accuracy": ACCURACY_RISE, "clip_score": CLIP_SCORE_RISE}  # adherence → its benchmark_scale rise
# "matched" on an axis, whether against a reference setting or against the front on the other axis
SLACKS = {"precision": PRECISION_SLACK, "accuracy": ACCURACY_SLACK, "clip_score": CLIP_SCORE_SLACK}


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
    """The benchmark scale ``w*``: the largest ``w`` at which the mean adherence (class accuracy, or the
    CLIP score with ``rise=RISES["clip_score"]``) still rises over the previous ``w`` of the grid by more
    than ``rise``.

    Args:
        accuracy: the mean adherence metric by guidance scale ``w`` (any order).
        rise: the smallest rise that counts (at saturation, 0.999 → 1.000 is noise); :data:`RISES` holds
            each adherence metric's.
    """
    scales = sorted(accuracy)
    chosen = scales[0]
    for previous, scale in itertools.pairwise(scales):
        if accuracy[scale] <= accuracy[previous] + rise:
            break
        chosen = scale
    return chosen


def _check_axes(axes: Sequence[str]) -> None:
    unknown = [axis for axis in axes if axis not in SLACKS]
    if not 1 <= len(axes) <= 2 or unknown:
        raise ValueError(
            f"the front's axes must be one or two of {tuple(SLACKS)} (fidelity, then adherence); got "
            f"{tuple(axes)}"
        )


def admissible(candidate: Row, reference: Row, axes: Sequence[str] = AXES) -> bool:
    """Matched fidelity and adherence: every one of ``axes`` at most its slack (:data:`SLACKS`) below the
    reference's (means over seeds). By default precision within :data:`PRECISION_SLACK` and class
    accuracy within :data:`ACCURACY_SLACK`; the CLIP score within :data:`CLIP_SCORE_SLACK`."""
    _check_axes(axes)
    return all(candidate[axis] >= reference[axis] - SLACKS[axis] for axis in axes)


def choose_strength(
    candidates: Mapping[float, Row], reference: Row, axes: Sequence[str] = AXES, gain: str = "recall"
) -> float:
    """The strength rule: among the strengths whose mean scores are :func:`admissible` on ``axes`` against
    plain CFG at the same ``w`` (``reference``), the one with the largest mean ``gain``; none admissible:
    the one best on the first axis (precision: fidelity first, never the most diverse; the adherence
    where it is the only axis)."""
    passing = [s for s, scores in candidates.items() if admissible(scores, reference, axes)]
    if passing:
        return max(passing, key=lambda s: candidates[s][gain])
    return max(candidates, key=lambda s: candidates[s][axes[0]])


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
    """For every method whose name starts with ``prefix``, then every peer that ran, at ``w*``: the share
    of the recall CFG lost from ``w = 1`` to ``w*`` that it recovers over plain CFG, whether its fidelity
    is matched (:func:`admissible`), and its paired recall difference to each other one of ``peers``
    that ran, with the precision difference that says whether the two were matched (±0.01). A method
    scored on fewer seeds is compared on its seeds only: the first ones, paired.

    Args:
        unguided: per seed, plain CFG's row at ``w = 1``.
        cfg: per seed, plain CFG's row at ``w*``.
        methods: method name → its per-seed rows at ``w*``.
        peers: the methods each one is compared with.
        prefix: which methods get a row beside the peers.

    Returns:
        ``recall_lost`` (on all seeds), and per method ``recovered`` (``None`` when CFG lost no recall on
        its seeds), ``matched`` and ``peers`` (peer → ``recall`` interval dict and ``precision_diff``).
    """

    def mean(rows: Sequence[Row], metric: str) -> float:
        return statistics.fmean(float(row[metric]) for row in rows)

    def lost_on(seeds: int) -> float:
        return mean(unguided[:seeds], "recall") - mean(cfg[:seeds], "recall")

    result: dict[str, Any] = {"recall_lost": lost_on(len(cfg))}
    named = [m for m in methods if m.startswith(prefix) and m not in peers]
    for name in named + [p for p in peers if p in methods]:
        mine, seeds = methods[name], len(methods[name])
        means = {m: mean(mine, m) for m in ("precision", "recall", "accuracy")}
        plain = {m: mean(cfg[:seeds], m) for m in ("precision", "recall", "accuracy")}
        compared = {
            peer: {
                "recall": paired_interval(paired_differences(mine, methods[peer], "recall")).to_dict(),
                "precision_diff": means["precision"] - mean(methods[peer][:seeds], "precision"),
            }
            for peer in peers
            if peer in methods and peer != name
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


def front_at(
    grid: Sequence[Row], value: float, axis: str, other: str | None, gain: str = "recall"
) -> tuple[float, float | None, str]:
    """CFG's front of one seed at ``axis = value``: its ``gain`` metric (recall) and its ``other`` axis
    there (``None`` for a front on one axis).

    The front is the seed's grid points (one row per ``w``) that no other beats on ``axis`` and ``gain``,
    joined in order of the axis (along ``w``, as guidance raises it); a value between two of them takes
    the gain and the other axis at the same fraction of the segment, and beyond the ends they are held.

    Beyond either end the front is unmeasured, so a gain there is no evidence of lying above it. Below its
    lowest point (the least guided) a smaller ``w`` would trade on towards more recall. Above its highest,
    no ``w`` of the grid reaches the value: a setting there is compared with the end point, whose
    recall is the front's lowest, and where the front is steep a difference of a few samples on the axis
    would count as a large gain in recall.

    Returns:
        the gain metric, the other axis, and where ``value`` lies: ``"below"`` the front's range,
        ``"within"`` it or ``"above"`` it.
    """
    indices = _pareto_indices([(row[axis], row[gain]) for row in grid])
    points = [(grid[i][axis], grid[i][gain], None if other is None else grid[i][other]) for i in indices]
    low, high = points[0], points[-1]
    if value <= low[0] or value >= high[0]:
        end = low if value <= low[0] else high
        side = "within" if low[0] <= value <= high[0] else "below" if value < low[0] else "above"
        return end[1], end[2], side
    for left, right in itertools.pairwise(points):
        if left[0] <= value <= right[0]:
            fraction = (value - left[0]) / (right[0] - left[0])
            between = None if other is None else left[2] + fraction * (right[2] - left[2])
            return left[1] + fraction * (right[1] - left[1]), between, "within"
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
        axis: the axis the front is drawn on (``precision``, ``accuracy`` or ``clip_score``).
        other: the other axis (``None`` for a front on one axis).
        gain: the gain metric minus the front's at the setting's own value of ``axis``.
        other_diff: the setting's ``other`` minus the front's there (``None`` without another axis).
        gains: the per-seed values of ``gain``.
        other_diffs: the per-seed values of ``other_diff`` (empty without another axis).
        below: seeds on which the setting's ``axis`` lies below the front's range, where the front is
            unmeasured (:func:`front_at`): no such seed's gain is evidence of lying above the front.
        above: seeds on which it lies above the front's range, unmeasured as well.
        gain_metric: what ``gain`` measures (``recall``, or a spread within a prompt).
    """

    axis: str
    other: str | None
    gain: Interval
    other_diff: Interval | None
    gains: list[float]
    other_diffs: list[float]
    below: int
    above: int
    gain_metric: str = "recall"

    @property
    def other_matched(self) -> bool:
        """The other axis matched: no worse than the front's by more than its slack (:data:`SLACKS`,
        mean over seeds); true for a front on one axis."""
        if self.other is None or self.other_diff is None:
            return True
        return self.other_diff.mean >= -SLACKS[self.other]

    @property
    def comparable(self) -> bool:
        """The gain is evidence about the front: the other axis matched and every seed within the
        front's range."""
        return self.other_matched and not (self.below or self.above)

    @property
    def beats(self) -> bool:
        """Above the front on ``axis``: the gain's interval clear of zero, and :attr:`comparable`."""
        return self.gain.above_zero and self.comparable

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "other": self.other,
            "gain_metric": self.gain_metric,
            "gain": self.gain.to_dict(),
            "other_diff": None if self.other_diff is None else self.other_diff.to_dict(),
            "gains": self.gains,
            "other_diffs": self.other_diffs,
            "below": self.below,
            "above": self.above,
            "comparable": self.comparable,
            "beats": self.beats,
        }


def front_gap(
    grid: Sequence[Sequence[Row]],
    rows: Sequence[Row],
    axis: str,
    axes: Sequence[str] = AXES,
    gain: str = "recall",
) -> FrontGap:
    """A setting's gain (recall) over CFG's front on ``axis``, seed by seed.

    Args:
        grid: per seed, plain CFG's rows along its ``w`` grid (in order of ``w``).
        rows: per seed, the setting's row; the first ``len(rows)`` seeds of ``grid`` are paired with it.
        axis: one of ``axes``; the other one (if any) is the one held.
        axes: the front's axes (:data:`AXES`, :data:`PROMPT_AXES`, or the adherence alone).
        gain: the metric the front trades against ``axis``.
    """
    _check_axes(axes)
    if axis not in axes:
        raise ValueError(f"axis must be one of {tuple(axes)}, got {axis!r}")
    if len(grid) < len(rows):
        raise ValueError(f"{len(rows)} seeds to pair with a CFG grid of {len(grid)} seeds")
    others = [a for a in axes if a != axis]
    other = others[0] if others else None
    gains, other_diffs, sides = [], [], []
    for seed_grid, row in zip(grid, rows, strict=False):
        front, other_value, side = front_at(seed_grid, row[axis], axis, other, gain)
        gains.append(float(row[gain]) - front)
        if other is not None:
            other_diffs.append(float(row[other]) - other_value)
        sides.append(side)
    other_diff = paired_interval(other_diffs) if other is not None else None
    return FrontGap(
        axis, other, paired_interval(gains), other_diff, gains, other_diffs,
        sides.count("below"), sides.count("above"), gain,
    )  # fmt: skip


def front_gaps(
    grid: Sequence[Sequence[Row]], rows: Sequence[Row], axes: Sequence[str] = AXES, gain: str = "recall"
) -> dict[str, FrontGap]:
    """:func:`front_gap` on every axis of ``axes``, keyed by axis."""
    return {axis: front_gap(grid, rows, axis, axes, gain) for axis in axes}


def best_front_gain(grid: Sequence[Sequence[Row]], rows: Sequence[Row], axes: Sequence[str] = AXES) -> float:
    """A setting's largest mean gain over CFG's front among the axes where it is :attr:`FrontGap.comparable`
    (``-inf`` on none): how a benchmark picks one of several candidates on its tuning seeds."""
    gaps = front_gaps(grid, rows, axes).values()
    return max((g.gain.mean for g in gaps if g.comparable), default=-math.inf)


__all__ = [
    "ACCURACY_RISE",
    "ACCURACY_SLACK",
    "AXES",
    "CLIP_SCORE_RISE",
    "CLIP_SCORE_SLACK",
    "PRECISION_SLACK",
    "PROMPT_AXES",
    "RISES",
    "SLACKS",
    "FrontGap",
    "Interval",
    "Row",
    "admissible",
    "benchmark_scale",
    "best_front_gain",
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
