"""bench/cfg.py: its models are exactly the training command's, its batches hold one class and draw
independent noise streams, its report keeps per-seed values from which every interval is recomputed, and
its dry run covers every stage end to end."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bench_scripts import load_bench

from atomgen.benchmark.stats import paired_interval
from atomgen.io import write_json
from atomgen.train.config import ExperimentConfig
from atomgen.train.run_lock import acquire_lock, release_lock

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def cfg():
    return load_bench("cfg")


@pytest.mark.parametrize("dataset", ["mnist5k", "fashion-mnist"])
def test_models_are_exactly_those_of_the_training_command(cfg, dataset, monkeypatch):
    """`atomgen train configs/<dataset>-cfg.yaml --set train.seed=<k> --set train.output_dir=<run>` plus a
    variant's `--set`s: bench/training.train_once refuses a run whose config differs by any key."""
    monkeypatch.chdir(ROOT)
    bench = cfg.Bench(Path("runs/cfg"), cfg.Preset.named("cpu"))
    plain = ExperimentConfig.from_yaml(f"configs/{dataset}-cfg.yaml").to_dict()
    for variant, changes in [
        ("", {}),
        ("atom0.3", {"method": "atom", "weight": 0.3}),
        ("atom0.1", {"method": "atom", "weight": 0.1}),
        ("atom-class0.3", {"method": "atom", "weight": 0.3, "within_class": True}),
    ]:
        expected = json.loads(json.dumps(plain))
        expected["train"] |= {
            "seed": 2,
            "output_dir": f"runs/cfg/{dataset}/seed2/model{'-' * bool(variant)}{variant}",
        }
        expected["separation"] |= changes
        assert bench.config(dataset, 2, variant).to_dict() == expected, variant
    assert bench.config(dataset, 0).train.snapshot_steps == [500, 1000]  # the guides of autoguidance
    assert set(cfg.VARIANTS) == {"atom0.3", "atom0.1", "atom-class0.3"}


def test_setting_names_and_registry_specs(cfg):
    Setting = cfg.Setting
    assert Setting("cfg", 1.5).name == "cfg-w1.5" and cfg.specs(Setting("cfg", 1.5)) == []
    assert Setting("atom", 1.5, 0.02).name == "atom-0.02-w1.5"
    assert cfg.specs(Setting("atom", 1.5, 0.02)) == ["atom:0.02"]
    guide = Path("runs/cfg/mnist5k/seed0/model/snapshots/step-500/pipeline")
    auto = Setting("autoguidance", 2.0, guide=500)
    assert auto.name == "autoguidance-step500-w2" and cfg.specs(auto, guide) == [
        f"autoguidance:2,guide={guide}"
    ]
    both = Setting("atom+autoguidance", 2.0, parts=(("atom", 0.02),), guide=500)
    assert both.name == "atom+autoguidance-atom0.02-step500-w2"
    assert cfg.specs(both, guide) == ["atom:0.02", f"autoguidance:2,guide={guide}"]
    combined = Setting("atom+interval", 1.5, parts=(("atom", 0.02), ("interval", 0.2)))
    assert cfg.specs(combined) == ["atom:0.02", "interval:0.2"]
    assert Setting("cfg", 1.5, model="atom0.3").name == "trained-atom0.3-cfg-w1.5"
    with pytest.raises(ValueError, match="guiding model"):
        cfg.specs(auto)


def test_a_setting_is_an_atomgen_sample_run(cfg, tmp_path):
    """Every setting is sampled by `atomgen sample`: the seed keys the noise, the methods go through the
    registry, and DDIM's η through the call options (0 for a flow)."""
    preset = cfg.Preset.named("cpu")
    setting = cfg.Setting("atom+interval", 1.5, parts=(("atom", 0.05), ("interval", 0.2)))
    run = cfg.sample_config(tmp_path / "pipeline", tmp_path / "out", setting, 2, preset, 10, flow=False)
    assert (run.seed, run.guidance_scale, run.steps, run.batch_size) == (2, 1.5, 15, 500)
    assert run.num_samples == 2000 and run.methods == ("atom:0.05", "interval:0.2")
    assert run.call_options == {"eta": 1.0}
    flow = cfg.sample_config(tmp_path / "p", tmp_path / "o", setting, 0, preset, 10, flow=True)
    assert flow.call_options == {"eta": 0.0}


METRICS = ("fid", "precision", "recall", "density", "coverage", "vendi", "lpips", "accuracy")


def scores(recall, precision=0.9, accuracy=0.95):
    rest = dict.fromkeys(METRICS, 0.0)
    return [{**rest, "recall": r, "precision": precision, "accuracy": accuracy} for r in recall]


def test_rows_keep_per_seed_values_and_flag_unbracketed_sweeps(cfg):
    by_scale = {1.5: scores([0.80, 0.82, 0.84])}
    setting = cfg.Setting("atom", 1.5, 0.02)
    (row,) = cfg._rows({setting: scores([0.83, 0.86, 0.85])}, by_scale)
    recall = row["recall"]
    assert recall["values"] == [0.83, 0.86, 0.85]
    again = paired_interval([a - b for a, b in zip(recall["values"], [0.80, 0.82, 0.84], strict=True)])
    assert (recall["diff"], recall["low"], recall["high"]) == tuple(again)
    (far,) = cfg._rows({cfg.Setting("autoguidance", 1.75, guide=500): scores([0.9] * 3)}, by_scale)
    assert "diff" not in far["recall"]  # no plain CFG at that w: nothing to pair with
    strengths = (("atom", (0.01, 0.02)), ("apg", (0.0, 0.5, 1.0)), ("pg", (0.02, 0.05, 0.1)))
    assert cfg._ends({"atom": 0.02, "apg": 0.0, "pg": 0.05}, strengths) == {"atom": "top"}
    assert cfg._ends({"atom": 0.01, "apg": 1.0, "pg": 0.05}, strengths) == {"atom": "bottom"}  # APG's η ≤ 1


def test_processes_share_the_scoring_through_claims(cfg, tmp_path, monkeypatch):
    """A setting another live process has claimed is waited for, not scored twice; the claim of a
    process that has stopped is taken over."""
    bench = cfg.Bench(tmp_path, cfg.Preset.named("dry-run"), progress=False)
    scored = []

    def score(dataset, seed, setting, pipes):  # the scheduling under test; sampling is the slow tests'
        path = bench.path(dataset, seed, setting)
        if not path.is_file():
            scored.append((seed, setting.name))
            write_json(path, {"recall": seed})
        return json.loads(path.read_text())

    monkeypatch.setattr(bench, "score", score)
    monkeypatch.setattr(cfg, "LOCK_POLL_SECONDS", 0.05)
    low, high = cfg.Setting("cfg", 1.0), cfg.Setting("cfg", 2.0)
    claims = tmp_path / "mnist5k" / "seed{}" / "claims"
    busy = Path(str(claims).format(1)) / f"{high.name}.lock"
    assert acquire_lock(busy) is None  # held by this process, which is alive: another scorer's claim
    stopped = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = Path(str(claims).format(0)) / f"{low.name}.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text(f"{socket.gethostname()} {int(stopped.stdout)}")

    def other_process() -> None:
        time.sleep(0.5)
        write_json(bench.path("mnist5k", 1, high), {"recall": 7})
        release_lock(busy)

    thread = threading.Thread(target=other_process)
    thread.start()
    table = bench.scores("mnist5k", [low, high])
    thread.join()
    assert [row["recall"] for row in table[high]] == [0, 7]
    assert sorted(scored) == [(0, low.name), (0, high.name), (1, low.name)]
    assert not busy.exists() and not stale.exists()


def test_preset_keeps_only_the_methods_asked_for(cfg):
    preset = cfg.Preset().only(["atom", "interval", "atom+interval"])
    assert [m for m, _ in preset.strengths] == ["interval", "atom"]
    assert preset.combined == (("atom+interval", None),) and preset.guides == ()
    assert cfg.Preset().only(["atom", "atom+autoguidance"]).guides == (500, 1000)
    with pytest.raises(SystemExit, match="interval"):
        cfg.Preset().only(["atom", "atom+interval"])


def run(command, **kwargs):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=True, **kwargs)


@pytest.mark.slow
def test_cfg_dry_run_writes_the_report_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "cfg.py"), "--out", str(tmp_path), "--dry-run"]
    command += ["--datasets", "mnist5k"]  # Fashion-MNIST is not installed everywhere
    run(command)
    report = json.loads((tmp_path / "cfg.json").read_text())
    part = report["datasets"]["mnist5k"]
    assert [row["scale"] for row in part["grid"]] == [1.0, 2.0, 3.0]
    methods = {row["method"] for row in part["methods"]}
    assert {"interval", "apg", "cads", "pg", "atom", "atom-feature", "atom+interval", "atom+apg"} <= methods
    assert {"autoguidance", "atom+autoguidance"} <= methods and part["guide"] == [2, 2.0]
    assert {row["model"] for row in part["methods"]} == {"", "atom-class0.3", "atom0.3"}
    # every variant on the tuning seed; the chosen one on both seeds
    seeds = {row["model"]: len(row["recall"]["values"]) for row in part["methods"] if row["model"]}
    assert seeds[part["variant"]] == 2 and sorted(seeds.values()) == [1, 2]
    assert f"Trained variant on every seed: {part['variant']}" in (tmp_path / "cfg.md").read_text()
    assert (tmp_path / "mnist5k" / "seed1" / f"model-{part['variant']}" / "pipeline").is_dir()
    assert {"atom", "atom-feature", "atom+interval", "atom+apg"} <= set(part["targets"])
    # both strengths of every method on every seed: the strength rule's and the front's
    w, seeds_of = (
        part["benchmark_scale"],
        {row["setting"]: len(row["recall"]["values"]) for row in part["methods"]},
    )
    assert part["for_front"].keys() == part["chosen"].keys()
    for picked in (part["chosen"], part["for_front"]):
        assert all(seeds_of[f"{m}-{s:g}-w{w:g}"] == 2 for m, s in picked.items())
    assert f"trained-{part['variant']}-cfg-w1" in part["front"] and "autoguidance-step2-w2" in part["front"]
    assert any(name.startswith("atom+interval-") for name in part["front"])
    for gaps in part["front"].values():
        assert set(gaps) == {"precision", "accuracy"}
    assert report["verdict"]["goal"] == []  # one dataset: nothing is confirmed
    assert "## Verdict: above CFG's front" in (tmp_path / "cfg.md").read_text()
    # Every interval recomputes from the stored per-seed values (paired with plain CFG at the same w).
    grid = {row["scale"]: row for row in part["grid"]}
    for row in part["methods"]:
        for metric in ("recall", "precision", "accuracy", "fid"):
            values, reference = row[metric]["values"], grid[row["scale"]][metric]["values"]
            again = paired_interval([a - b for a, b in zip(values, reference, strict=False)])
            assert row[metric]["diff"] == pytest.approx(again.mean) and (row[metric]["low"] is None) == (
                again.low is None
            )
    for name, gaps in part["front"].items():
        gap = gaps["precision"]
        assert gap["gain"]["mean"] == pytest.approx(paired_interval(gap["gains"]).mean), name
    # `atomgen compare` on a benchmark model reproduces the benchmark's scores: the same runs, the same scorer.
    out, w = tmp_path / "compare", part["benchmark_scale"]
    compare = [sys.executable, "-m", "atomgen", "compare", str(tmp_path / "mnist5k" / "seed0" / "model")]
    compare += ["--real", "mnist5k", "--out", str(out), "--extractor", "classifier", "--seeds", "1"]
    compare += ["--samples-per-class", "6", "--steps", "2", "--batch-size", "4", "--call-option", "eta=1"]
    run([*compare, "--scales", "1", "2", "3", "--method", f"pg:{part['chosen']['pg']:g}", "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    for row, benchmark in zip(report["grid"], part["grid"], strict=True):
        assert {m: row[m]["values"][0] for m in METRICS} == {m: benchmark[m]["values"][0] for m in METRICS}
    if report["benchmark_scale"] == w:
        chosen = part["chosen"]["pg"]
        (pg,) = [r for r in part["methods"] if r["setting"] == f"pg-{chosen:g}-w{w:g}"]
        assert report["methods"][0]["recall"]["values"][0] == pg["recall"]["values"][0]
    markdown = (tmp_path / "cfg.md").read_text()
    assert "### Targets" in markdown and "act within one class" in markdown
    assert "above (accuracy axis)" in markdown and "Trained variants" in markdown
    assert (tmp_path / "cfg-front.png").stat().st_size > 0
    scores_written = sorted((tmp_path / "mnist5k").glob("seed*/scores/classifier/*.json"))
    stamps = [path.stat().st_mtime_ns for path in scores_written]
    run(command)
    assert [path.stat().st_mtime_ns for path in scores_written] == stamps  # a second run redoes nothing
    assert (tmp_path / "cfg.md").read_text() == markdown
    # --grid-only stops after the grid (here: all cached) and says so in the report.
    run([*command, "--grid-only"])
    part = json.loads((tmp_path / "cfg.json").read_text())["datasets"]["mnist5k"]
    assert "methods" not in part and len(part["grid"]) == 3
    assert "### Methods" not in (tmp_path / "cfg.md").read_text()
    # --cached-only: an interim report from the seeds whose scores are all written; samples nothing.
    (tmp_path / "mnist5k" / "seed1" / "scores" / "classifier" / "cfg-w2.json").unlink()
    run([*command, "--cached-only"])
    part = json.loads((tmp_path / "cfg.json").read_text())["datasets"]["mnist5k"]
    assert (
        part["seeds"] == 1
        and "Interim: of 2 model seeds, the CFG grid is scored on 1" in (tmp_path / "cfg.md").read_text()
    )
    assert not (tmp_path / "mnist5k" / "seed1" / "scores" / "classifier" / "cfg-w2.json").exists()


@pytest.mark.slow
def test_cfg_dry_run_on_the_flow_transformer(tmp_path):
    """`--model flow-dit`: every guidance method of the benchmark on class-conditional DiT rectified flows."""
    command = [sys.executable, str(ROOT / "bench" / "cfg.py"), "--out", str(tmp_path), "--dry-run"]
    run([*command, "--datasets", "mnist5k", "--model", "flow-dit"])
    report = json.loads((tmp_path / "cfg-flow-dit.json").read_text())
    assert report["model"] == "flow-dit"
    scheduler = tmp_path / "mnist5k" / "seed0" / "model" / "pipeline" / "scheduler" / "scheduler_config.json"
    assert json.loads(scheduler.read_text())["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    methods = {row["method"] for row in report["datasets"]["mnist5k"]["methods"]}
    assert {"interval", "apg", "cads", "pg", "atom", "atom-feature", "atom+interval", "atom+apg"} <= methods
    assert not any(row["model"] for row in report["datasets"]["mnist5k"]["methods"])  # no trained variants


@pytest.mark.slow
def test_train_only_shards_train_every_model_once(tmp_path):
    """`--train-only --shard K/N`: the workers share the models (baselines, then the tuning seed's variants)
    side by side; the chosen variant's other seeds wait until the scores choose it."""
    command = [sys.executable, str(ROOT / "bench" / "cfg.py"), "--out", str(tmp_path), "--dry-run"]
    command += ["--datasets", "mnist5k", "--train-only", "--shard"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workers = [
        subprocess.Popen([*command, f"{k}/2"], stderr=subprocess.PIPE, text=True, env=env) for k in (0, 1)
    ]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()[-2000:]
    trained = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/*/pipeline"))
    assert trained == [
        "mnist5k/seed0/model",
        "mnist5k/seed0/model-atom-class0.3",
        "mnist5k/seed0/model-atom0.3",
        "mnist5k/seed1/model",
    ]
    assert not list(tmp_path.glob("*/*/scores"))  # trains only
    with pytest.raises(subprocess.CalledProcessError, match="exit status 2"):
        run([*command, "2/2"])  # no such worker
