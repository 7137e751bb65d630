"""The prepared GPU check stays runnable: its --dry-run does every step at tiny sizes on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path), "--dry-run"],
        capture_output=True, text=True, timeout=600, env=env, check=True,
    )  # fmt: skip
    table = result.stdout
    assert "| mnist5k atom |" in table and "| Inception features |" in table
    assert "| separation B=16 n=16 d=32 |" in table
    assert (tmp_path / "train-atom" / "pipeline" / "model_index.json").is_file()


def test_sweep_rule_prefers_diversity_within_the_baselines_fidelity():
    sweep = load_bench("sweep")

    def scores(name, fid, precision, diversity):
        values = {"fid": fid, "precision": precision}
        values.update({metric: [diversity] * len(fid) for metric in sweep.DIVERSITY})
        return sweep.Scores(sweep.Setting(name, "atom"), values)

    baseline = scores("baseline", [10.0, 12.0], [0.8, 0.8], 0.5)  # FID 11 ± 1.41
    same = scores("same", [11.0, 11.0], [0.8, 0.8], 0.5)
    close = scores("close", [12.0, 12.0], [0.8, 0.8], 0.55)  # within the spread, 10 % more diverse
    diverse_but_worse = scores("worse", [20.0, 20.0], [0.8, 0.8], 0.9)
    imprecise = scores("imprecise", [10.0, 10.0], [0.5, 0.5], 0.9)
    assert sweep.diversity_gain(close, baseline) == pytest.approx(0.1)
    assert sweep.choose([same, close, diverse_but_worse, imprecise], baseline) is close
    # Nothing admissible: the best fidelity wins rather than the most diverse.
    assert sweep.choose([diverse_but_worse, imprecise], baseline) is imprecise


@pytest.mark.slow
def test_sweep_dry_run_writes_every_stage_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "sweep.py"), "--out", str(tmp_path), "--dry-run"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [*command, "--workers", "1"], capture_output=True, text=True, timeout=600, env=env, check=True
    )
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert len(report["stages"]) == 4 and len(report["winners"]) == 4
    names = {row["name"] for rows in report["stages"].values() for row in rows}
    assert {"atom-signed-coulomb-w0.1", "atom-repulsive-gaussian-w0.1", "particle-guidance-0.2"} <= names
    timings = (tmp_path / "timings.json").read_text()
    # A second run finds every run's samples and scores and redoes nothing.
    subprocess.run(
        [*command, "--workers", "1"], capture_output=True, text=True, timeout=600, env=env, check=True
    )
    assert (tmp_path / "timings.json").read_text() == timings
    assert json.loads((tmp_path / "sweep.json").read_text())["stages"] == report["stages"]
    # --confirm runs the baseline and the four winners, unchanged.
    confirm = [
        *command[:3],
        str(tmp_path / "confirm"),
        "--dry-run",
        "--confirm",
        str(tmp_path / "sweep.json"),
    ]
    subprocess.run(
        [*confirm, "--workers", "1"], capture_output=True, text=True, timeout=600, env=env, check=True
    )
    confirmed = json.loads((tmp_path / "confirm" / "confirm.json").read_text())
    assert [row["name"] for row in confirmed["winners"].values()] == [
        row["name"] for row in report["winners"].values()
    ]


def test_cfg_rules_pick_the_scale_and_the_strength_at_matched_fidelity():
    cfg = load_bench("cfg")
    # Accuracy rises up to w = 3 and falls after: w* = 3, even though it rises again at 6.
    assert cfg.benchmark_scale({1.0: 0.90, 2.0: 0.95, 3.0: 0.96, 4.0: 0.955, 6.0: 0.97}) == 3.0
    assert cfg.benchmark_scale({1.0: 0.90, 2.0: 0.80}) == 1.0
    assert cfg.benchmark_scale({2.0: 0.9965, 2.5: 0.9995, 3.0: 1.0}) == 2.5  # saturated: no rise
    plain = {"precision": 0.90, "recall": 0.70, "accuracy": 0.95}
    candidates = {
        0.1: {"precision": 0.895, "recall": 0.75, "accuracy": 0.95},  # admissible
        0.2: {"precision": 0.891, "recall": 0.80, "accuracy": 0.945},  # admissible, more recall
        0.4: {"precision": 0.85, "recall": 0.90, "accuracy": 0.95},  # spread off the data
        0.8: {"precision": 0.90, "recall": 0.95, "accuracy": 0.93},  # wrong classes
    }
    assert cfg.choose_strength(candidates, plain) == 0.2
    # Nothing admissible: the most precise strength, not the most diverse.
    assert cfg.choose_strength({k: candidates[k] for k in (0.4, 0.8)}, plain) == 0.8


def test_cfg_paired_interval_and_targets():
    cfg = load_bench("cfg")
    mean, low, high = cfg.paired_interval([0.02, 0.03, 0.04])
    assert mean == pytest.approx(0.03) and low == pytest.approx(0.03 - 4.303 * 0.01 / 3**0.5, abs=1e-3)
    assert high == pytest.approx(2 * mean - low)
    assert cfg.paired_interval([0.1]) == (0.1, None, None)

    def rows(recall, precision=0.9):
        return [
            {**dict.fromkeys(cfg.METRICS, 0.0), "recall": r, "precision": precision, "accuracy": 0.95}
            for r in recall
        ]

    unguided, plain = rows([0.96, 0.96, 0.96]), rows([0.80, 0.82, 0.84])  # CFG lost 0.14 recall
    table = {cfg.Setting(peer, 3.0, 0.1): rows([0.81, 0.83, 0.85]) for peer in cfg.PEERS}
    table[cfg.Setting("atom", 3.0, 0.1)] = rows([0.87, 0.89, 0.91], precision=0.895)
    result = cfg.targets(unguided, plain, table)
    assert result["recall_lost"] == pytest.approx(0.14)
    assert result["atom"]["recovered"] == pytest.approx(0.5) and result["atom"]["matched"]
    recall, low, high = result["atom"]["peers"]["apg"]["recall"]
    assert recall == pytest.approx(0.06) and low == pytest.approx(0.06) == high  # no spread: exact
    assert result["atom"]["peers"]["apg"]["precision_diff"] == pytest.approx(-0.005)
    # --methods without peers: the targets compare with the peers that ran, and the report says so
    alone = cfg.targets(
        unguided, plain, {cfg.Setting("atom", 3.0, 0.1): table[cfg.Setting("atom", 3.0, 0.1)]}
    )
    assert alone["atom"]["peers"] == {} and alone["atom"]["recovered"] == pytest.approx(0.5)
    assert "vs apg" not in "\n".join(cfg._targets(alone)) and "vs apg" in "\n".join(cfg._targets(result))
    # CFG's front from w = 1 (precision 0.88) to w* = 3 (0.90), w = 4 beyond w* ignored: at precision
    # 0.895 CFG's recall is three quarters of the way down (0.84, 0.855, 0.87 on the three seeds), so
    # atom sits 0.03, 0.035, 0.04 above it; the peers, at precision 0.90, lie 0.01 above its end.
    grid = {1.0: rows([0.96, 0.96, 0.96], precision=0.88), 3.0: plain, 4.0: rows([0.1] * 3, precision=0.5)}
    gaps = cfg.front_gaps(grid, 3.0, table)
    assert gaps["atom"][0] == pytest.approx(0.035)
    assert gaps["apg"][0] == pytest.approx(0.01) and gaps["apg"][1] == pytest.approx(0.01)
    # A grid point that another beats on precision and recall is no part of the front.
    assert cfg._pareto([(0.95, 0.80), (0.97, 0.75), (0.97, 0.70), (0.94, 0.66)]) == [
        (0.95, 0.80),
        (0.97, 0.75),
    ]


def test_cfg_preset_keeps_only_the_methods_asked_for():
    cfg = load_bench("cfg")
    preset = cfg.Preset().only(["atom", "interval", "atom+interval"])
    assert [m for m, _ in preset.strengths] == ["interval", "atom"] and preset.combined == ("atom+interval",)
    with pytest.raises(SystemExit, match="interval"):
        cfg.Preset().only(["atom", "atom+interval"])


@pytest.mark.slow
def test_cfg_dry_run_writes_the_report_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "cfg.py"), "--out", str(tmp_path), "--dry-run"]
    command += ["--datasets", "mnist5k"]  # Fashion-MNIST is not installed everywhere
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=True)
    report = json.loads((tmp_path / "cfg.json").read_text())
    part = report["datasets"]["mnist5k"]
    assert [row["scale"] for row in part["grid"]] == [1.0, 2.0, 3.0]
    methods = {row["method"] for row in part["methods"]}
    assert {"interval", "apg", "cads", "pg", "atom", "atom-feature", "atom+interval", "atom+apg"} <= methods
    assert {"atom", "atom-feature", "atom+interval", "atom+apg"} <= set(part["targets"])
    assert set(part["front"]) == methods - {"cfg"}
    assert (tmp_path / "cfg-front.png").stat().st_size > 0 and "### Targets" in (
        tmp_path / "cfg.md"
    ).read_text()
    markdown = (tmp_path / "cfg.md").read_text()
    scores = sorted((tmp_path / "mnist5k").glob("seed*/scores/*.json"))
    stamps = [path.stat().st_mtime_ns for path in scores]
    subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=True)
    assert [path.stat().st_mtime_ns for path in scores] == stamps  # a second run redoes nothing
    assert (tmp_path / "cfg.md").read_text() == markdown  # (nan intervals of the 1-seed sweeps: text)
    # --grid-only stops after the grid (here: all cached) and says so in the report.
    subprocess.run(
        [*command, "--grid-only"], capture_output=True, text=True, timeout=600, env=env, check=True
    )
    part = json.loads((tmp_path / "cfg.json").read_text())["datasets"]["mnist5k"]
    assert (
        "methods" not in part
        and len(part["grid"]) == 3
        and "### Methods" not in (tmp_path / "cfg.md").read_text()
    )
    # --cached-only: an interim report from the seeds whose scores are all written; samples nothing.
    (tmp_path / "mnist5k" / "seed1" / "scores" / "cfg-w2.json").unlink()
    subprocess.run(
        [*command, "--cached-only"], capture_output=True, text=True, timeout=600, env=env, check=True
    )
    part = json.loads((tmp_path / "cfg.json").read_text())["datasets"]["mnist5k"]
    assert part["seeds"] == 1 and "Interim: 1 of 2 model seeds" in (tmp_path / "cfg.md").read_text()
    assert not (tmp_path / "mnist5k" / "seed1" / "scores" / "cfg-w2.json").exists()


@pytest.mark.slow
def test_cfg_dry_run_on_the_flow_transformer(tmp_path):
    """`--model flow-dit`: every method of the benchmark on class-conditional DiT rectified flows."""
    command = [sys.executable, str(ROOT / "bench" / "cfg.py"), "--out", str(tmp_path), "--dry-run"]
    command += ["--datasets", "mnist5k", "--model", "flow-dit"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=True)
    report = json.loads((tmp_path / "cfg-flow-dit.json").read_text())
    assert report["model"] == "flow-dit"
    config = json.loads(
        (
            tmp_path / "mnist5k" / "seed0" / "model" / "pipeline" / "scheduler" / "scheduler_config.json"
        ).read_text()
    )
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    methods = {row["method"] for row in report["datasets"]["mnist5k"]["methods"]}
    assert {"interval", "apg", "cads", "pg", "atom", "atom-feature", "atom+interval", "atom+apg"} <= methods
