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
