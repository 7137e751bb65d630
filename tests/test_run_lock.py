"""One training per run directory: a live trainer's lock refuses a second one; a dead one's is taken over."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from test_train import tiny

from atomgen.train import RunLocked, train
from atomgen.train.run_lock import LOCK, run_lock


def _lock(run, pid: int, host: str | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK).write_text(f"{host or socket.gethostname()} {pid}")


def test_a_live_trainer_refuses_a_second_one(tmp_path):
    config = tiny(tmp_path)
    run = tmp_path / "run"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            _lock(run, other.pid)
            with pytest.raises(RunLocked, match=f"being trained by process {other.pid}"):
                train(config, dry_run=True)
            assert not (run / "config.yaml").exists()  # refused before anything is written
        finally:
            other.kill()


def test_a_dead_trainers_lock_is_taken_over_and_released(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    run = tmp_path / "run"
    _lock(run, int(finished.stdout))
    train(tiny(tmp_path), dry_run=True)
    assert (run / "config.yaml").is_file() and not (run / LOCK).exists()


def test_another_hosts_lock_is_respected_and_says_how_to_clear_it(tmp_path):
    _lock(tmp_path, 1, host="elsewhere.example")
    with pytest.raises(RunLocked, match=r"if it has stopped, delete .*\.train\.lock"), run_lock(tmp_path):
        pass


def test_the_command_line_says_so_and_fails(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(tiny(tmp_path).to_yaml())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            _lock(tmp_path / "run", other.pid)
            done = subprocess.run(
                [sys.executable, "-m", "atomgen", "train", str(config), "--dry-run"],
                capture_output=True,
                text=True,
            )
        finally:
            other.kill()
    assert done.returncode == 1 and f"being trained by process {other.pid}" in done.stderr


@pytest.mark.slow
def test_a_benchmark_waits_for_the_model_another_process_trains(tmp_path, monkeypatch):
    """bench/training.train_once on a run that `atomgen train` is training: it waits, then uses that
    model, training nothing itself (one metrics line per step, not two runs' worth)."""
    import time

    from bench_scripts import load_bench

    training = load_bench("training")
    monkeypatch.setattr(training, "LOCK_POLL_SECONDS", 0.2)
    config = tiny(tmp_path, "train.steps=6")
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    run = tmp_path / "run"
    with subprocess.Popen([sys.executable, "-m", "atomgen", "train", str(path)]) as other:
        while not (run / LOCK).exists() and other.poll() is None:
            time.sleep(0.05)
        assert other.poll() is None, "the training ended before the benchmark could meet its lock"
        folder = training.train_once(config, "pipeline", progress=False)
        assert other.wait() == 0
    assert folder == run / "pipeline" and (folder / "model_index.json").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6


def test_a_lock_being_written_is_respected(tmp_path):
    (tmp_path / LOCK).touch()  # taken a moment ago; its process has not written its name yet
    with pytest.raises(RunLocked, match="another process has just taken"), run_lock(tmp_path):
        pass
