"""atomgen.benchmark.report and guidance_report: the JSON keeps per-seed values, the Markdown shows both
axes of the front and flags unbracketed sweeps, the front plot is written."""

from __future__ import annotations

import json

from atomgen.benchmark import guidance_report
from atomgen.benchmark.report import Series, cell, front_plot, summary, table, write_reports
from atomgen.benchmark.stats import front_gaps

METRICS = guidance_report.SHOWN


def scores(precision: float, recall: float, accuracy: float) -> dict[str, float]:
    return {**dict.fromkeys(METRICS, 0.5), "precision": precision, "recall": recall, "accuracy": accuracy}


def row(setting: str, method: str, scale: float, seeds: list[dict[str, float]], reference, **extra):
    entry = {"setting": setting, "method": method, "scale": scale, "model": "", "guide": None, **extra}
    for metric in METRICS:
        entry[metric] = summary([s[metric] for s in seeds], [r[metric] for r in reference])
    return entry


def synthetic_report() -> dict:
    """Two seeds of a CFG grid at w = 1, 2 and one method above its front on the precision axis."""
    grid = {1.0: [scores(0.90, 0.90, 0.90)] * 2, 2.0: [scores(0.96, 0.70, 0.98)] * 2}
    method = [scores(0.93, 0.85, 0.94), scores(0.93, 0.852, 0.94)]
    per_seed = [[grid[1.0][k], grid[2.0][k]] for k in range(2)]
    return {
        "preset": {"seeds": 2, "samples_per_class": 6, "inference_steps": 2, "eta": 1.0},
        "model": "cfg",
        "machine": {"platform": "test", "device": "CPU", "threads": 1, "torch": "x"},
        "datasets": {
            "mnist5k": {
                "seeds": 2,
                "benchmark_scale": 2.0,
                "grid": [row(f"cfg-w{w:g}", "cfg", w, grid[w], grid[w]) for w in (1.0, 2.0)],
                "tuned_on": "mnist5k",
                "chosen": {"atom": 0.1},
                "ends": {"atom": "top"},
                "guide": None,
                "methods": [row("atom-0.1-w2", "atom", 2.0, method, grid[2.0], strength=0.1)],
                "targets": {"recall_lost": 0.2},
                "front": {"atom-0.1-w2": {a: g.to_dict() for a, g in front_gaps(per_seed, method).items()}},
            }
        },
    }


def test_cells_and_tables():
    entry = summary([0.5, 0.7], reference=[0.4, 0.5])
    assert cell(entry) == "0.600 ± 0.141" and "<br>Δ +0.150 [" in cell(entry, diff=True)
    assert table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_guidance_report_shows_both_axes_and_writes_json_markdown_and_plot(tmp_path):
    report = synthetic_report()
    text = write_reports(
        report,
        "cfg",
        (tmp_path, None),
        guidance_report.markdown,
        lambda path: guidance_report.front_plot(report, path),
        figure_suffix="-front.png",
    )
    assert (tmp_path / "cfg.md").read_text() == text
    stored = json.loads((tmp_path / "cfg.json").read_text())["datasets"]["mnist5k"]
    assert stored["methods"][0]["recall"]["values"] == [0.85, 0.852]  # per-seed values kept
    assert (tmp_path / "cfg-front.png").stat().st_size > 0
    assert "**Not bracketed**: atom (at the top of its sweep)" in text
    assert "Δ recall at its precision" in text and "Δ recall at its accuracy" in text
    # at precision 0.93 the front's recall is 0.80 and accuracy 0.94: the method is above it
    line = next(x for x in text.splitlines() if x.startswith("| atom-0.1-w2 | +0.051 ["))
    assert line.count("**yes**") == 2  # on both axes: at accuracy 0.94 the front has recall 0.80 too


def test_a_setting_below_the_fronts_range_is_flagged_and_never_above_it(tmp_path):
    report = synthetic_report()
    part = report["datasets"]["mnist5k"]
    grid = [[scores(0.90, 0.90, 0.90), scores(0.96, 0.70, 0.98)]] * 2
    looser = [scores(0.88, 0.95, 0.88)] * 2  # less precise and less accurate than w = 1, more recall
    part["front"]["pg-0.2-w2"] = {a: g.to_dict() for a, g in front_gaps(grid, looser).items()}
    text = guidance_report.markdown(report)
    line = next(x for x in text.splitlines() if x.startswith("| pg-0.2-w2 |"))
    assert "**yes**" not in line and line.count("no (2 seed(s) below its range)") == 2


def test_front_plot_writes_nothing_without_panels(tmp_path):
    front_plot([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    front_plot([("d", "precision", [Series("CFG", [0.9, 0.95], [0.9, 0.8], line=True)])], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_an_interim_report_says_on_how_many_seeds_the_methods_are_scored():
    report = synthetic_report()
    assert "Interim" not in guidance_report.markdown(report)  # grid and methods on both seeds
    report["datasets"]["mnist5k"]["method_seeds"] = 1
    text = guidance_report.markdown(report)
    assert "**Interim: of 2 model seeds, the CFG grid is scored on 2 and the methods on 1**" in text
