"""bench/vae.py: the λ rule and the target on constructed scores, and its dry run end to end (slow)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_scripts import load_bench

ROOT = Path(__file__).parent.parent


def _scores(mse=0.02, recall=0.5, units=100.0, coverage=0.6):
    """One seed's scores of one model: every metric the benchmark compares."""
    return {
        "reconstruction_mse": mse,
        "active_units": units,
        "kl": 20.0,
        "recall": recall,
        "coverage": coverage,
        "precision": 0.7,
        "density": 0.9,
        "fid": 10.0,
        "vendi": 5.0,
        "modes_covered": 10,
    }


def test_the_lambda_rule_takes_the_best_recall_within_the_reconstruction_bar():
    bench = load_bench("vae")
    baseline = _scores(mse=0.020)
    candidates = {
        0.03: _scores(mse=0.020, recall=0.50),
        0.1: _scores(mse=0.021, recall=0.55),  # exactly +5 %: on the bar, admissible
        0.3: _scores(mse=0.0211, recall=0.70),  # best recall, but above the bar
    }
    assert bench.choose_weight(candidates, baseline) == {"weight": 0.1, "admissible": True}
    # Equal recall: more active units wins.
    tied = {0.03: _scores(recall=0.5, units=90), 0.1: _scores(recall=0.5, units=120)}
    assert bench.choose_weight(tied, baseline)["weight"] == 0.1
    # None within the bar: the lowest reconstruction error, marked inadmissible.
    worse = {0.1: _scores(mse=0.03, recall=0.9), 0.3: _scores(mse=0.025, recall=0.1)}
    assert bench.choose_weight(worse, baseline) == {"weight": 0.3, "admissible": False}


def test_the_target_needs_the_bar_and_intervals_above_zero_against_both_peers():
    bench = load_bench("vae")
    baseline = [_scores(units=100 + k, recall=0.50 + k / 100, coverage=0.60) for k in range(3)]
    dispersive = [_scores(units=101 + k, recall=0.51 + k / 100, coverage=0.61) for k in range(3)]
    better = [_scores(units=110 + k, recall=0.58 + k / 100 + k / 1000, coverage=0.70) for k in range(3)]
    result = bench.check_target(better, baseline, dispersive)
    assert result["met"] and result["reconstruction"]["ratio"] == pytest.approx(1.0)
    assert len(result["checks"]) == 6 and all(c["met"] for c in result["checks"])
    # Reconstruction above the bar: missed, however diverse.
    blurry = [{**s, "reconstruction_mse": 0.03} for s in better]
    assert not bench.check_target(blurry, baseline, dispersive)["met"]
    # Coverage equal to Dispersive Loss's: that check fails (an interval touching zero).
    tie = [{**s, "coverage": 0.61} for s in better]
    failed = [
        (c["peer"], c["metric"])
        for c in bench.check_target(tie, baseline, dispersive)["checks"]
        if not c["met"]
    ]
    assert failed == [("dispersive", "coverage")]
    # One seed has no interval: never met.
    assert not bench.check_target(better[:1], baseline[:1], dispersive[:1])["met"]
    # Over datasets: every β of both datasets, and both datasets measured.
    met, missed = {"met": True}, {"met": False}
    assert bench.targets({"mnist5k": {"0.001": met}, "fashion-mnist": {"0.001": met, "0.004": met}})["met"]
    partial = bench.targets({"mnist5k": {"0.001": met, "0.004": missed}, "fashion-mnist": {"0.001": met}})
    assert partial["datasets"] == {"mnist5k": False, "fashion-mnist": True} and not partial["met"]
    only = bench.targets({"mnist5k": {"0.001": met}})
    assert not only["met"] and only["missing"] == ["fashion-mnist"]


def test_compare_pairs_seeds_and_picks_each_methods_lambda():
    bench = load_bench("vae")
    base = bench.Setting("baseline", 1e-3)
    per_seed = {
        base: [_scores(recall=0.5), _scores(recall=0.6)],
        bench.Setting("atom", 1e-3, 0.1): [_scores(recall=0.6), _scores(recall=0.8)],
        bench.Setting("atom", 1e-3, 0.3): [_scores(recall=0.9, mse=0.05), _scores(recall=0.9, mse=0.05)],
        bench.Setting("dispersive", 1e-3, 0.03): [_scores(recall=0.5), _scores(recall=0.6)],
    }
    result = bench.compare(per_seed)
    assert result["chosen"]["atom"] == {"weight": 0.1, "admissible": True}
    assert result["chosen"]["dispersive"] == {"weight": 0.03, "admissible": True}
    atom = next(r for r in result["rows"] if r["setting"] == "atom-0.1-kl0.001")
    assert atom["recall"]["mean"] == pytest.approx(0.7) and atom["recall"]["diff"] == pytest.approx(0.15)
    assert atom["recall"]["low"] < 0.15 < atom["recall"]["high"]  # two seeds: a (wide) interval
    # A λ swept on the first seed only pairs with the baseline's first seed; the choice comes from outside.
    per_seed[bench.Setting("atom", 1e-3, 0.03)] = [_scores(recall=0.7)]
    given = {"atom": {"weight": 0.1, "admissible": True}, "dispersive": result["chosen"]["dispersive"]}
    result = bench.compare(per_seed, given)
    swept = next(r for r in result["rows"] if r["setting"] == "atom-0.03-kl0.001")
    assert swept["recall"]["diff"] == pytest.approx(0.2) and swept["recall"]["low"] is None
    assert result["chosen"] == given and result["target"]["checks"][0]["low"] is not None
    assert result["target"]["reconstruction"]["met"] and not result["target"]["met"]  # units equal


def test_settings_presets_and_yaml_numbers():
    bench = load_bench("vae")
    assert bench.Setting("baseline", 0.004).name == "baseline-kl0.004"
    assert bench.Setting("atom", 0.001, 0.3).name == "atom-0.3-kl0.001"
    dry = bench.Preset.named("dry-run")
    assert dry.seeds == 2 and dry.tune_seeds == 1  # a sweep on seed 0 (two atom λ), the choice on seed 1
    assert dict(dry.weights) == {"atom": (0.1, 0.3), "dispersive": (0.03,)}
    assert [m for m, _ in bench.Preset.named("cpu").weights] == ["atom", "dispersive"]
    with pytest.raises(ValueError, match="unknown preset"):
        bench.Preset.named("tpu")
    import yaml

    for value in (1e-5, 0.004, 0.3, 1.0):  # YAML reads Python's 1e-05 as a string
        assert yaml.safe_load(bench._number(value)) == pytest.approx(value)


def _choice(weights: dict[float, tuple[float, float]]):
    """What a sweep would choose: ``β`` multiple → (atom λ, dispersive λ), in :meth:`Bench.tuned`'s form."""
    return {
        factor: {
            "atom": {"weight": atom, "admissible": True},
            "dispersive": {"weight": disp, "admissible": True},
        }
        for factor, (atom, disp) in weights.items()
    }


def test_later_seeds_and_the_other_dataset_confirm_what_the_tune_seeds_chose(tmp_path):
    bench = load_bench("vae")
    runs = bench.Bench(tmp_path, bench.Preset.named("cpu"), progress=False)
    assert runs.preset.tune == "mnist5k" and runs.tune_seeds() == 1
    swept = runs.settings("mnist5k", 0)
    assert [len(settings) for settings in swept.values()] == [7, 7]  # the baseline, 3 λ per method
    assert runs.sweeps("mnist5k", 0) and not runs.sweeps("mnist5k", 1)
    assert not runs.sweeps("fashion-mnist", 0)
    runs._tuned["mnist5k"] = _choice({1.0: (0.3, 0.01), 4.0: (0.03, 0.1)})
    expected = {
        "0.001": ["baseline-kl0.001", "atom-0.3-kl0.001", "dispersive-0.01-kl0.001"],
        "0.004": ["baseline-kl0.004", "atom-0.03-kl0.004", "dispersive-0.1-kl0.004"],
    }
    for dataset, seed in (("mnist5k", 1), ("mnist5k", 2), ("fashion-mnist", 0)):
        confirmed = runs.settings(dataset, seed)
        assert {f"{kl:g}": [s.name for s in settings] for kl, settings in confirmed.items()} == expected
    # Without a tune dataset every dataset sweeps its own first seeds; the GPU preset sweeps all seeds.
    own = bench.Bench(tmp_path, dataclasses.replace(runs.preset, tune=None), progress=False)
    assert own.sweeps("fashion-mnist", 0) and not own.sweeps("fashion-mnist", 1)
    gpu = bench.Bench(tmp_path, bench.Preset.named("gpu"), progress=False)
    assert gpu.tune_seeds() == 5 and gpu.sweeps("mnist5k", 4)


def test_shards_split_the_models_and_wait_for_the_tune_seeds(tmp_path):
    bench = load_bench("vae")
    runs = bench.Bench(tmp_path, bench.Preset.named("cpu"), progress=False)
    runs._tuned["mnist5k"] = _choice({1.0: (0.1, 0.01), 4.0: (0.1, 0.03)})
    jobs = list(runs.jobs("mnist5k"))
    assert len(jobs) == 2 * (7 + 3 + 3) and [seed for seed, _ in jobs[:14]] == [0] * 14  # seed 0 first
    shares = [jobs[index::2] for index in range(2)]
    assert sorted(shares[0] + shares[1], key=jobs.index) == jobs and not set(shares[0]) & set(shares[1])
    for share in shares:  # each core gets as many of the slow atom-separation models
        assert sum(setting.method == "atom" for _, setting in share) == 5
    assert [bench.shard(text) for text in ("0/2", "1/2")] == [(0, 2), (1, 2)]
    for wrong in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
            bench.shard(wrong)
    worker = bench.Bench(tmp_path, bench.Preset.named("cpu"), progress=False, shard=(1, 2))
    sweep = itertools.islice(worker.jobs("mnist5k"), 14)  # the tune seed needs no choice
    assert [job for job in sweep] == jobs[:14]
    with pytest.raises(SystemExit, match="14 models of the mnist5k sweep"):
        worker.settings("mnist5k", 1)  # later seeds train what the sweep chose
    with pytest.raises(SystemExit, match="--seeds 1 --shard"):
        worker.settings("fashion-mnist", 0)  # and so does Fashion-MNIST


def test_held_out_data_keeps_each_images_label():
    from atomgen.train.config import DataConfig

    bench = load_bench("vae")
    training = sys.modules["training"]  # bench/training.py, imported by the script
    data = DataConfig(name="digits", limit=1700)
    held = training.held_out_data(data, 40)
    everything = DataConfig(name="digits").load()
    index = {
        image.numpy().tobytes(): label
        for image, label in zip(everything.images, everything.labels, strict=True)
    }
    assert [index[image.numpy().tobytes()] for image in held.images] == held.labels.tolist()
    assert torch.equal(held.images, training.held_out(data, 40))
    source = training.held_out_source(data, 40)  # the real side of every benchmark's run_eval
    assert source.name == "digits" and source.labels.tolist() == held.labels.tolist()
    assert (
        torch.allclose(source.images, (held.images + 1) / 2)
        and bench.held_out_source is training.held_out_source
    )


@pytest.mark.slow
def test_vae_dry_run_writes_the_report_and_resumes(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    command = [sys.executable, str(ROOT / "bench" / "vae.py"), "--out", str(out), "--dry-run"]
    command += ["--datasets", "mnist5k"]  # Fashion-MNIST is not installed everywhere
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # As make vae: two workers' shares of the tune seed, then of the rest (one after the other here);
    # no worker writes a report.
    for stage in (["--seeds", "1"], []):
        for index in range(2):
            subprocess.run(
                [*command, *stage, "--shard", f"{index}/2"],
                capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT,
            )  # fmt: skip
    assert not (out / "vae.json").exists()
    first = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT
    )
    assert "training" not in first.stderr and "scoring" not in first.stderr  # the shards did it all
    report = json.loads((out / "vae.json").read_text())
    part = report["datasets"]["mnist5k"]
    assert set(part["kl_weights"]) == {"0.001", "0.004"}  # the config's β and 4× it
    for entry in part["kl_weights"].values():
        assert [r["setting"].split("-kl")[0] for r in entry["rows"]] == [
            "baseline",
            "atom-0.1",
            "atom-0.3",
            "dispersive-0.03",
        ]
        seeds = {r["setting"].split("-kl")[0]: len(r["recall"]["values"]) for r in entry["rows"]}
        atom = entry["chosen"]["atom"]["weight"]  # both seeds for it, the other λ on seed 0 only
        assert seeds == {"baseline": 2, "atom-0.1": 1, "atom-0.3": 1, "dispersive-0.03": 2} | {
            f"atom-{atom:g}": 2
        }
        assert set(entry["chosen"]) == {"atom", "dispersive"} and len(entry["target"]["checks"]) == 6
        assert all(check["low"] is not None for check in entry["target"]["checks"])  # paired on 2 seeds
    assert part["config"]["atom_weight"]["weight"] in (0.1, 0.3) and part["num_units"] > 0
    assert "classifier" in part["extractor"]
    assert report["targets"]["missing"] == ["fashion-mnist"] and not report["targets"]["met"]
    markdown = (out / "vae.md").read_text()
    assert "## mnist5k" in markdown and "### β = 0.004" in markdown and "- mnist5k: **" in markdown
    assert f"separation.weight = {part['config']['atom_weight']['weight']:g}" in markdown
    assert "not measured: fashion-mnist" in markdown and " (1 seed) |" in markdown
    assert (out / "vae.png").read_bytes()[:4] == b"\x89PNG"
    seed = out / "mnist5k" / "seed0" / "atom-0.1-kl0.001"
    assert (seed / "eval" / "prior-samples.png").is_file() and (
        seed / "model" / "vae" / "config.json"
    ).is_file()
    done = {p: p.stat().st_mtime_ns for p in out.glob("mnist5k/seed*/*/*") if p.is_file()}
    assert len(done) == 14 * 2  # scores.json and train.json of 2 β × (4 models on seed 0 + 3 on seed 1)
    # A second run finds every model and score and redoes nothing; --results gets copies.
    again = subprocess.run(
        [*command, "--results", str(results)],
        capture_output=True, text=True, timeout=600, env=env, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "training" not in again.stderr and "scoring" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in done} == done
    copied = json.loads((results / "vae.json").read_text())
    assert copied["datasets"] == report["datasets"] and copied["targets"] == report["targets"]
    assert (results / "vae.md").is_file() and (results / "vae.png").is_file()
