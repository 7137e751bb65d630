"""atomgen.benchmark.stats against closed forms: the t-interval, the w* and strength rules, the Pareto set,
the front interpolated along the w grid, and the verdict on two axes."""

from __future__ import annotations

import doctest
import math

import pytest

import atomgen.benchmark.report
import atomgen.benchmark.stats
from atomgen.benchmark.report import summary
from atomgen.benchmark.stats import (
    CLIP_SCORE_SLACK,
    PROMPT_AXES,
    RISES,
    Interval,
    admissible,
    benchmark_scale,
    best_front_gain,
    choose_strength,
    format_interval,
    front_at,
    front_gap,
    front_gaps,
    grid_end,
    paired_differences,
    paired_interval,
    pareto_set,
    recovery,
)

T_975_2 = 4.302652729911275  # the 97.5 % quantile of Student's t with 2 degrees of freedom


def test_paired_interval_is_the_t_interval():
    mean, low, high = paired_interval([0.02, 0.03, 0.04])
    half = T_975_2 * 0.01 / 3**0.5  # the sample std of 0.02, 0.03, 0.04 is 0.01
    assert (
        mean == pytest.approx(0.03)
        and low == pytest.approx(0.03 - half)
        and high == pytest.approx(0.03 + half)
    )
    assert paired_interval([0.1]) == Interval(0.1, None, None) and not paired_interval([0.1]).above_zero
    assert (
        paired_interval([0.02, 0.03, 0.04]).above_zero and not paired_interval([-0.01, 0.03, 0.04]).above_zero
    )
    assert format_interval(Interval(0.012, 0.004, 0.02)) == "+0.012 [+0.004, +0.020]"
    assert format_interval(0.1, None, None) == "+0.100 (one seed: no interval)"
    with pytest.raises(ValueError, match="at least one"):
        paired_interval([])


def test_per_seed_summary_recomputes_its_interval():
    entry = summary([0.5, 0.7, 0.65], reference=[0.4, 0.5, 0.6, 0.9])  # a 4th reference seed: unpaired
    assert entry["values"] == [0.5, 0.7, 0.65]
    again = paired_interval([a - b for a, b in zip(entry["values"], [0.4, 0.5, 0.6], strict=True)])
    assert (entry["diff"], entry["low"], entry["high"]) == tuple(again)
    with pytest.raises(ValueError, match="3 seeds to pair"):
        paired_differences([{"recall": 1.0}] * 3, [{"recall": 1.0}] * 2, "recall")


def test_benchmark_scale_is_the_last_rise_of_accuracy():
    # Accuracy rises up to w = 3 and falls after: w* = 3, even though it rises again at 6.
    assert benchmark_scale({1.0: 0.90, 2.0: 0.95, 3.0: 0.96, 4.0: 0.955, 6.0: 0.97}) == 3.0
    assert benchmark_scale({1.0: 0.90, 2.0: 0.80}) == 1.0
    assert benchmark_scale({2.0: 0.9965, 2.5: 0.9995, 3.0: 1.0}) == 2.5  # saturated: no rise


def test_strength_rule_picks_recall_at_matched_fidelity_and_flags_grid_ends():
    plain = {"precision": 0.90, "recall": 0.70, "accuracy": 0.95}
    candidates = {
        0.1: {"precision": 0.895, "recall": 0.75, "accuracy": 0.95},  # admissible
        0.2: {"precision": 0.891, "recall": 0.80, "accuracy": 0.945},  # admissible, more recall
        0.4: {"precision": 0.85, "recall": 0.90, "accuracy": 0.95},  # spread off the data
        0.8: {"precision": 0.90, "recall": 0.95, "accuracy": 0.93},  # wrong classes
    }
    assert admissible(candidates[0.2], plain) and not admissible(candidates[0.8], plain)
    assert choose_strength(candidates, plain) == 0.2
    # Nothing admissible: the most precise strength, not the most diverse.
    assert choose_strength({k: candidates[k] for k in (0.4, 0.8)}, plain) == 0.8
    assert grid_end(0.4, (0.1, 0.2, 0.4)) == "top" and grid_end(0.1, (0.1, 0.2, 0.4)) == "bottom"
    assert grid_end(0.2, (0.1, 0.2, 0.4)) is None and grid_end(0.2, (0.2,)) is None


def test_pareto_set_keeps_the_points_no_other_beats():
    points = [(0.95, 0.80), (0.97, 0.75), (0.97, 0.70), (0.94, 0.66), (0.99, 0.75)]
    assert pareto_set(points) == [(0.95, 0.80), (0.99, 0.75)]
    assert pareto_set([(0.9, 0.5), (0.9, 0.5)]) == [(0.9, 0.5)]


def row(precision: float, recall: float, accuracy: float) -> dict[str, float]:
    return {"precision": precision, "recall": recall, "accuracy": accuracy}


# One seed's CFG grid along w = 1, 1.5, 2, 3: precision and accuracy rise, recall falls; w = 3 loses
# precision and accuracy, so it is no part of either front.
GRID = [row(0.90, 0.90, 0.90), row(0.94, 0.80, 0.96), row(0.96, 0.70, 0.98), row(0.95, 0.60, 0.97)]


def test_front_is_interpolated_along_the_w_grid_on_either_axis():
    # precision 0.92 is half-way from w = 1 to 1.5: recall 0.85, accuracy 0.93 there
    recall, accuracy, side = front_at(GRID, 0.92, "precision", "accuracy")
    assert (recall, accuracy, side) == (pytest.approx(0.85), pytest.approx(0.93), "within")
    # accuracy 0.97 is half-way from w = 1.5 to 2 on the accuracy axis: recall 0.75, precision 0.95
    recall, precision, side = front_at(GRID, 0.97, "accuracy", "precision")
    assert (recall, precision, side) == (pytest.approx(0.75), pytest.approx(0.95), "within")
    # beyond the ends the front is held, and the side says which end
    assert front_at(GRID, 0.99, "precision", "accuracy") == (0.70, 0.98, "above")
    assert front_at(GRID, 0.85, "precision", "accuracy") == (0.90, 0.90, "below")
    assert front_at(GRID, 0.90, "precision", "accuracy")[2] == "within"


def test_a_setting_beats_the_front_only_with_an_interval_above_zero_and_the_other_axis_held():
    grids = [GRID, GRID, GRID]
    # on every seed 0.03–0.05 above the front at its precision, accuracy 0.93 + 0.005: beats it
    better = [row(0.92, 0.85 + gain, 0.935) for gain in (0.03, 0.04, 0.05)]
    gap = front_gap(grids, better, "precision")
    assert gap.gain.mean == pytest.approx(0.04) and gap.gains == pytest.approx([0.03, 0.04, 0.05])
    assert gap.other_diff.mean == pytest.approx(0.005) and gap.beats and gap.below == gap.above == 0
    # the same recall with class accuracy 0.02 below the front's: not above it on the precision axis
    assert not front_gap(grids, [row(0.92, r["recall"], 0.91) for r in better], "precision").beats
    # a gain whose interval contains zero is no result
    assert not front_gap(grids, [row(0.92, 0.85 + g, 0.93) for g in (-0.02, 0.04, 0.05)], "precision").beats
    # on the accuracy axis the same settings sit at accuracy 0.935, near w = 1.5 (recall ≈ 0.817)
    both = front_gaps(grids, better)
    assert set(both) == {"precision", "accuracy"} and both["accuracy"].axis == "accuracy"
    expected = 0.85 + 0.04 - (0.90 + (0.935 - 0.90) / (0.96 - 0.90) * (0.80 - 0.90))
    assert both["accuracy"].gain.mean == pytest.approx(expected)
    assert both["accuracy"].to_dict()["gains"] == pytest.approx(both["accuracy"].gains)
    with pytest.raises(ValueError, match="axis must be one of"):
        front_gap(grids, better, "recall")


def test_a_gain_beyond_the_fronts_range_is_no_evidence():
    grids = [GRID, GRID, GRID]
    # less precise than w = 1 (0.90) with more recall: a smaller w might reach it, so it is not above
    below = front_gap(grids, [row(0.88, 0.95, 0.90)] * 3, "precision")
    assert below.gain.mean == pytest.approx(0.05) and below.below == 3 and not below.beats
    assert below.to_dict()["below"] == 3 and not below.to_dict()["beats"]
    # a hair more precise than w = 2 (0.96): compared with w = 2's recall, the front's lowest, it would
    # gain 0.08 over a front that falls 0.10 in recall for 0.02 of precision: unmeasured, not counted
    above = front_gap(grids, [row(0.961, 0.78, 0.98)] * 3, "precision")
    assert above.gain.mean == pytest.approx(0.08) and above.above == 3 and above.below == 0
    assert not above.comparable and not above.beats
    # within the range on both axes, the other matched: comparable, and best_front_gain takes the larger
    inside = [row(0.92, 0.88, 0.935)] * 3
    gaps = front_gaps(grids, inside)
    assert all(g.comparable for g in gaps.values())
    assert best_front_gain(grids, inside) == pytest.approx(max(g.gain.mean for g in gaps.values()))
    assert best_front_gain(grids, [row(0.961, 0.78, 0.99)] * 3) == -math.inf


def test_prompt_pipelines_use_the_clip_score_with_its_own_thresholds():
    # w*: the CLIP score (0–100) rises by 0.5 then by 0.05, below CLIP_SCORE_RISE: saturation at w = 3
    assert benchmark_scale({1.0: 30.0, 3.0: 30.5, 5.0: 30.55}, rise=RISES["clip_score"]) == 3.0
    # matched adherence: the CLIP score at most CLIP_SCORE_SLACK (0.5 point) lower, precision within 0.01
    plain = {"precision": 0.80, "recall": 0.50, "clip_score": 31.0, "dino_distance": 0.30}
    close = {"precision": 0.795, "recall": 0.60, "clip_score": 31.0 - CLIP_SCORE_SLACK, "dino_distance": 0.4}
    far = {"precision": 0.80, "recall": 0.70, "clip_score": 30.4, "dino_distance": 0.5}
    assert admissible(close, plain, PROMPT_AXES) and not admissible(far, plain, PROMPT_AXES)
    assert choose_strength({0.1: close, 0.2: far}, plain, PROMPT_AXES) == 0.1
    # without reference images: the CLIP score alone is matched, the gain is the spread within a prompt
    spread_only = {0.1: close, 0.2: far | {"clip_score": 30.6}}
    assert choose_strength(spread_only, plain, ("clip_score",), "dino_distance") == 0.2
    # nothing admissible: the best on the first axis, here the CLIP score itself
    assert (
        choose_strength({0.2: far, 0.4: far | {"clip_score": 29.0}}, plain, ("clip_score",), "dino_distance")
        == 0.2
    )
    with pytest.raises(ValueError, match="the front's axes must be one or two of"):
        admissible(close, plain, ("recall",))


def test_a_front_on_the_clip_score_alone_and_on_precision_with_the_clip_score_held():
    def point(clip: float, spread: float, precision: float = 0.9) -> dict[str, float]:
        return {"clip_score": clip, "dino_distance": spread, "precision": precision, "recall": spread}

    grid = [point(30.0, 0.40, 0.90), point(31.0, 0.30, 0.94), point(32.0, 0.20, 0.96)]  # along w
    better = [point(30.5, 0.35 + gain) for gain in (0.03, 0.04, 0.05)]  # the front is at 0.35 there
    gap = front_gap([grid] * 3, better, "clip_score", ("clip_score",), "dino_distance")
    assert gap.other is None and gap.other_diff is None and gap.other_diffs == []
    assert gap.gain.mean == pytest.approx(0.04) and gap.beats and gap.gain_metric == "dino_distance"
    assert gap.to_dict()["other_diff"] is None and gap.to_dict()["gain_metric"] == "dino_distance"
    assert set(front_gaps([grid] * 3, better, ("clip_score",), "dino_distance")) == {"clip_score"}
    # on the precision front, a CLIP score 0.4 point below the front's is within its 0.5 slack; 0.6 is not
    # (precision 0.92 is half-way from w = 1 to 2: recall 0.35, CLIP score 30.5 there)
    held = [point(30.1, 0.35 + gain, 0.92) for gain in (0.03, 0.04, 0.05)]
    assert front_gap([grid] * 3, held, "precision", PROMPT_AXES).beats
    lower = [point(29.9, 0.35 + gain, 0.92) for gain in (0.03, 0.04, 0.05)]
    gap = front_gap([grid] * 3, lower, "precision", PROMPT_AXES)
    assert gap.other == "clip_score" and gap.other_diff.mean == pytest.approx(-0.6) and not gap.beats
    with pytest.raises(ValueError, match="axis must be one of"):
        front_gap([grid] * 3, better, "accuracy", PROMPT_AXES)


def test_recovery_pairs_each_method_with_plain_cfg_and_the_peers():
    peers = ("interval", "apg", "cads", "pg")
    unguided = [row(0.9, 0.96, 0.95)] * 3
    plain = [row(0.9, r, 0.95) for r in (0.80, 0.82, 0.84)]  # CFG lost 0.14 recall
    methods = {peer: [row(0.9, r, 0.95) for r in (0.81, 0.83, 0.85)] for peer in peers}
    methods["atom"] = [row(0.895, r, 0.95) for r in (0.87, 0.89, 0.91)]
    result = recovery(unguided, plain, methods, peers)
    assert result["recall_lost"] == pytest.approx(0.14) and list(result) == ["recall_lost", "atom", *peers]
    assert result["atom"]["recovered"] == pytest.approx(0.5) and result["atom"]["matched"]
    recall = result["atom"]["peers"]["apg"]["recall"]
    assert recall["mean"] == pytest.approx(0.06) and recall["low"] == pytest.approx(0.06)  # no spread
    assert result["atom"]["peers"]["apg"]["precision_diff"] == pytest.approx(-0.005)
    # each peer gets its own row, compared with the other peers only
    assert result["pg"]["recovered"] == pytest.approx(0.01 / 0.14) and set(result["pg"]["peers"]) == set(
        peers[:3]
    )
    # a method on its first seed only is paired with those; peers that did not run are left out
    alone = recovery(unguided, plain, {"atom": methods["atom"][:1]}, peers)
    assert alone["atom"]["peers"] == {} and alone["atom"]["recovered"] == pytest.approx((0.87 - 0.80) / 0.16)


@pytest.mark.parametrize("module", [atomgen.benchmark.stats, atomgen.benchmark.report])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
