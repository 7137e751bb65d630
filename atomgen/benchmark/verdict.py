"""A guidance benchmark's verdict: which settings lie above CFG's front, on which axis, on the tuning
dataset and, unchanged, on the confirmation dataset, and how each compares there with autoguidance, the
anchor that beats CFG's front in the literature.

It reads the report dict of ``bench/cfg.py`` (per dataset, ``methods`` rows and their ``front`` gaps,
:meth:`atomgen.benchmark.stats.FrontGap.to_dict`). A setting is the same on two datasets when only its
``w`` differs and it is a method at the dataset's own ``w*``; autoguidance and the trained variants keep
their own ``w`` grid, so for them ``w`` is part of the setting.
"""

from __future__ import annotations

from typing import Any

from atomgen.benchmark.stats import AXES, Interval, paired_interval

Key = tuple[Any, ...]


def setting_key(row: dict[str, Any]) -> Key:
    """What makes a row the same setting on another dataset (see the module's docstring)."""
    own_grid = bool(row.get("model")) or row["method"] == "autoguidance"
    parts = tuple(tuple(part) for part in row.get("parts") or ())
    key = (row["method"], row["strength"], parts, row.get("model") or "", row.get("guide"))
    return (*key, row["scale"]) if own_grid else key


def is_atom(row: dict[str, Any]) -> bool:
    """Atom separation, guided (``atom``, ``atom-feature``, ``atom-sparse``, combined) or trained."""
    return bool(row.get("model")) or row["method"].startswith("atom")


def paired_difference(gains: list[float], others: list[float]) -> Interval:
    """``gains`` minus ``others`` seed by seed (over the seeds both have), with its 95 % interval."""
    return paired_interval([a - b for a, b in zip(gains, others, strict=False)])


def anchor(part: dict[str, Any], axis: str) -> str | None:
    """The autoguidance setting with the largest mean gain over CFG's front on ``axis`` among those whose
    gain counts there (comparable: other axis matched, every seed within the front's range)."""
    gaps = {
        row["setting"]: part["front"][row["setting"]][axis]
        for row in part.get("methods", ())
        if row["method"] == "autoguidance" and row["setting"] in part["front"]
    }
    counted = [name for name, gap in gaps.items() if gap["comparable"]]
    return max(counted, key=lambda name: gaps[name]["gain"]["mean"], default=None)


def standings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting and axis on which the setting lies above CFG's front on some dataset, with its gap
    on every dataset (``None`` where it was not run) and its paired gain over the dataset's autoguidance
    :func:`anchor` (``None`` where autoguidance has none that counts, or for autoguidance itself)."""
    parts = report["datasets"]
    rows = {
        dataset: {setting_key(row): row for row in part.get("methods", ()) if row["setting"] in part["front"]}
        for dataset, part in parts.items()
    }
    found: dict[tuple[Key, str], dict[str, Any]] = {}
    for dataset, by_key in rows.items():
        for key, row in by_key.items():
            for axis in AXES:
                if parts[dataset]["front"][row["setting"]][axis]["beats"]:
                    entry = {
                        "setting": row["setting"],
                        "atom": is_atom(row),
                        "anchor": row["method"] == "autoguidance",
                    }
                    found.setdefault((key, axis), entry)
    anchors = {(d, axis): anchor(part, axis) for d, part in parts.items() for axis in AXES}
    result = []
    for (key, axis), entry in found.items():
        gaps, versus = {}, {}
        for dataset, by_key in rows.items():
            row = by_key.get(key)
            gap = None if row is None else parts[dataset]["front"][row["setting"]][axis]
            gaps[dataset] = gap
            best = anchors[dataset, axis]
            if gap is None or best is None or entry["anchor"]:
                versus[dataset] = None
                continue
            diff = paired_difference(gap["gains"], parts[dataset]["front"][best][axis]["gains"])
            versus[dataset] = {"autoguidance": best, "diff": diff.to_dict()}
        result.append({**entry, "axis": axis, "gaps": gaps, "versus_autoguidance": versus})
    return result


def goal(standings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The :func:`standings` that meet the benchmark's goal: atom separation above CFG's front on an axis
    on every dataset of the report (two at least: tuned, then confirmed untouched), and nowhere clearly
    below autoguidance's best there (the paired interval of the difference not wholly below zero)."""

    def ties_or_beats(versus: dict[str, Any] | None) -> bool:
        return versus is None or versus["diff"]["high"] is None or versus["diff"]["high"] >= 0

    return [
        entry
        for entry in standings
        if entry["atom"]
        and len(entry["gaps"]) >= 2
        and all(gap is not None and gap["beats"] for gap in entry["gaps"].values())
        and all(ties_or_beats(v) for v in entry["versus_autoguidance"].values())
    ]


__all__ = ["anchor", "goal", "is_atom", "paired_difference", "setting_key", "standings"]
