"""The prepared GPU check stays runnable: its --dry-run does every step at tiny sizes on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


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
