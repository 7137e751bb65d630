"""bench/attribution.py and its report (atomgen.benchmark.attribution_report): the rules on constructed
inputs, and the dry run end to end (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_scripts import load_bench

from atomgen.benchmark import attribution_report

ROOT = Path(__file__).parent.parent


def test_role_diagnostics_of_uniform_and_committed_roles():
    bench = load_bench("attribution")
    uniform = torch.full((2, 4, 3), 1 / 3)
    result = bench.role_diagnostics(1 - uniform[..., 2], uniform, uniform[..., 1] - uniform[..., 0])
    assert result["role_entropy"] == pytest.approx(math.log(3))
    assert result["role_entropy_fraction"] == pytest.approx(1.0)
    assert result["importance_spread"] == pytest.approx(0.0, abs=1e-12)
    assert result["mean_abs_charge"] == pytest.approx(0.0)
    # Every atom: proton, neutron, proton, neutron (one-hot): s = 1, 0, 1, 0 and q = 1, 0, 1, 0.
    roles = torch.eye(3)[[1, 2, 1, 2]].expand(2, 4, 3)
    result = bench.role_diagnostics(1 - roles[..., 2], roles, roles[..., 1] - roles[..., 0])
    assert result["role_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert result["importance_spread"] == pytest.approx(0.5)  # population std across the particles
    assert result["mean_abs_charge"] == pytest.approx(0.5)
    assert result["mean_importance"] == pytest.approx(0.5)
    assert result["sample_spread"] == pytest.approx(0.0, abs=1e-12)  # the same map for both samples
    swapped = torch.stack([roles[0], roles[0].flip(0)])  # the second sample: neutron, proton, ...
    assert bench.role_diagnostics(1 - swapped[..., 2], swapped, swapped[..., 1] - swapped[..., 0])[
        "sample_spread"
    ] == pytest.approx(0.5)


def test_targets_need_both_datasets_both_curves_and_an_interval_above_zero():
    bench = attribution_report  # the report's summaries, targets and maps

    def interval(mean, low, high):
        return {"mean": mean, "low": low, "high": high}

    def dataset(low):
        return {
            baseline: {curve: interval(0.02, low, 0.04) for curve in bench.CURVES}
            for baseline in bench.BASELINES
        }

    both = {"mnist5k": dataset(0.01), "fashion-mnist": dataset(0.01)}
    result = bench.targets(both)
    assert result["met"] and not result["missing"] and len(result["checks"]) == 8
    # An interval touching zero, one seed (no interval), or a dataset not measured: missed.
    touching = {**both, "fashion-mnist": dataset(0.0)}
    assert not bench.targets(touching)["met"]
    one_seed = {**both, "mnist5k": dataset(None)}
    assert not bench.targets(one_seed)["met"]
    only = bench.targets({"mnist5k": dataset(0.01)})
    assert not only["met"] and only["missing"] == ["fashion-mnist"]
    assert [c["met"] for c in only["checks"]] == [True] * 4 + [False] * 4
    # Integrated gradients is reported but is not part of the target.
    weaker = {d: {**part, "integrated_gradients": dataset(-1.0)["feature_norm"]} for d, part in both.items()}
    assert bench.targets(weaker)["met"]


def test_summary_pairs_seeds_and_normalized_maps():
    bench = attribution_report  # the report's summaries, targets and maps

    def summary(gain):  # the learned importance's gain over random is `gain`, every baseline's 0.01
        methods = {
            m: {
                "deletion_auc": 0.3 + g,
                "insertion_auc": 0.4 + g,
                "deletion_gain": g,
                "insertion_gain": g,
            }
            for m, g in ((m, gain if m == bench.LEARNED else 0.01) for m in bench.METHODS)
        }
        return {
            **methods,
            "random": {"deletion_auc": 0.3, "insertion_auc": 0.4},
            "diagnostics": dict.fromkeys(bench.DIAGNOSTICS, 0.5),
        }

    def seed(gain):  # under the uniform weighting the learned importances trail the baselines
        learned = summary(gain)
        return {
            "summary": learned,
            "uniform": summary(-gain),
            "by_tau": {"0.3": learned},
            "reference": "mean particle",
            "seconds": 1.0,
        }

    part = bench.summarize([seed(0.02), seed(0.03), seed(0.04)])
    paired = part["paired"]["gradient_x_activation"]["deletion"]
    assert paired["mean"] == pytest.approx(0.02)
    assert paired["low"] == pytest.approx(0.02 - 4.303 * 0.01 / 3**0.5, abs=1e-3)
    assert part["methods"][bench.LEARNED]["deletion_auc"]["mean"] == pytest.approx(0.33)
    assert part["best"] == {"deletion": bench.LEARNED, "insertion": bench.LEARNED}
    uniform = part["uniform"]
    assert uniform["paired"]["feature_norm"]["insertion"]["mean"] == pytest.approx(-0.04)
    assert uniform["paired"]["feature_norm"]["insertion"]["high"] < 0
    assert uniform["best"]["deletion"] != bench.LEARNED
    scores = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    assert torch.equal(bench.normalized(scores), torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))


def test_versus_pairs_the_seeds_both_variants_measured():
    bench = attribution_report  # the report's summaries, targets and maps
    this = [{"recall": 0.5 + 0.1 * k, "fid": 10.0} for k in range(3)]
    other = [{"recall": 0.4 + 0.1 * k + 0.01 * k * k, "fid": 12.0} for k in range(2)]  # one seed fewer
    result = bench.versus(this, other)
    assert result["seeds"] == 2
    recall = result["rows"]["recall"]
    assert recall["difference"]["mean"] == pytest.approx(0.095) and recall["difference"]["low"] is not None
    assert recall["this"]["values"] == pytest.approx([0.5, 0.6]) and recall["other"]["mean"] == pytest.approx(
        0.455
    )
    assert result["rows"]["fid"]["difference"] == {"mean": -2.0, "low": -2.0, "high": -2.0}


def test_held_out_images_are_outside_the_training_subset():
    from atomgen.train.config import DataConfig

    bench = load_bench("attribution")
    data = DataConfig(name="digits", limit=1700)
    images = bench.held_out(data, 50)
    training = {image.numpy().tobytes() for image in data.load().images}
    assert images.shape == (50, 1, 8, 8)
    assert not any(image.numpy().tobytes() in training for image in images)
    assert torch.equal(images, bench.held_out(data, 50))  # the same images every time
    with pytest.raises(ValueError, match="fewer than the 1000"):
        bench.held_out(data, 1000)
    with pytest.raises(ValueError, match="no image is held out"):
        bench.held_out(DataConfig(name="digits"), 10)


@pytest.mark.slow
def test_attribution_dry_run_writes_the_report_and_resumes(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    command = [sys.executable, str(ROOT / "bench" / "attribution.py"), "--out", str(out), "--dry-run"]
    command += ["--datasets", "mnist5k"]  # Fashion-MNIST is not installed everywhere
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT)
    report = json.loads((out / "attribution.json").read_text())
    part = report["datasets"]["mnist5k"]
    assert part["seeds"] == 2 and part["site"] == "mid_block" and part["reference"] == "mean particle"
    assert set(part["methods"]) == {
        "importance",
        "feature_norm",
        "gradient_x_activation",
        "integrated_gradients",
        "random",
    }
    for method in ("importance", "gradient_x_activation"):
        assert len(part["methods"][method]["deletion_gain"]["values"]) == 2
    assert set(part["paired"]) == {"feature_norm", "gradient_x_activation", "integrated_gradients"}
    assert part["paired"]["feature_norm"]["insertion"]["low"] is not None  # two seeds: an interval
    assert set(part["by_tau"]) == {"0.3", "0.6"}
    assert 0 <= part["diagnostics"]["role_entropy_fraction"]["mean"] <= 1 + 1e-9
    assert set(part["uniform"]["paired"]) == set(part["paired"])  # both weightings measured
    samples = part["samples"]  # 24 DDIM samples per seed against 24 held-out digits
    assert len(samples["per_seed"]) == 2 and samples["extractor"].startswith("digit-classifier-mnist5k")
    assert all(0 <= seed["recall"] <= 1 and 1 <= seed["modes_covered"] <= 10 for seed in samples["per_seed"])
    assert samples["scores"]["fid"]["mean"] > 0
    assert report["targets"]["missing"] == ["fashion-mnist"] and not report["targets"]["met"]
    markdown = (out / "attribution.md").read_text()
    assert "## mnist5k" in markdown and "## Targets" in markdown and "not measured" in markdown
    assert "Samples of these models (24 each, DDIM 4 steps" in markdown
    assert "uniform weighting" in markdown
    assert (out / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    measured = {p: p.stat().st_mtime_ns for p in out.glob("mnist5k/seed*/*") if p.is_file()}
    assert len(measured) == 8  # attribution.json, maps.npz, samples.json, train.json of each seed
    # A second run finds every model and measurement and redoes nothing; --results gets copies.
    subprocess.run(
        [*command, "--results", str(results)],
        capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT,
    )  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in measured} == measured
    again = json.loads((results / "attribution.json").read_text())
    assert again["datasets"] == report["datasets"] and again["targets"] == report["targets"]
    assert (results / "attribution.md").is_file() and (results / "attribution.png").is_file()
    # A variant in its own folder, compared seed by seed with the run above.
    variant = tmp_path / "variant"
    subprocess.run(
        [*command[:3], str(variant), *command[4:], "--set", "separation.options={commitment_weight: 1.0}",
         "--versus", str(out)],
        capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT,
    )  # fmt: skip
    compared = json.loads((variant / "attribution.json").read_text())
    assert compared["versus"] == {"out": str(out), "set": []}
    rows = compared["datasets"]["mnist5k"]["versus"]
    assert rows["seeds"] == 2 and set(rows["rows"]) >= {"deletion gain (uniform)", "samples: recall"}
    assert rows["rows"]["samples: fid"]["other"]["values"] == part["samples"]["scores"]["fid"]["values"]
    assert "## Against" in (variant / "attribution.md").read_text()


def test_set_adds_overrides_to_every_dataset_of_the_preset():
    runner = load_bench("runner")
    attribution = load_bench("attribution")
    args = runner.parse_arguments(
        attribution.__doc__,
        attribution.DATASETS,
        "x",
        ["--out", "o", "--seeds", "2", "--set", "separation.options={commitment_weight: 1.0}"],
    )
    preset = runner.chosen_preset(args, attribution.Preset)
    assert preset.seeds == 2
    for dataset in attribution.DATASETS:
        own = attribution.Preset().overrides_of(dataset)
        assert preset.overrides_of(dataset) == (*own, "separation.options={commitment_weight: 1.0}")
