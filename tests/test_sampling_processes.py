"""``atomgen sample`` and ``compare`` as separate processes: ``accelerate launch --num_processes 2`` on the
CPU writes the single process's files bit for bit (and ``compare`` its report), and a run killed with
SIGKILL resumes to the uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diffusers import DDIMPipeline, DDIMScheduler
from tiny import tiny_unet

from atomgen.pipelines import AtomClassConditionalPipeline

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every process
# `--cpu` would start one process (accelerate's simple launcher); `--multi_gpu` starts torchrun, whose
# processes find no GPU and join a gloo group on the CPU (accelerate's MULTI_CPU)
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


def atomgen_sample(source: Path, out: Path, *options: str) -> list[str]:
    return [
        "-m",
        "atomgen",
        "sample",
        str(source),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *options,
    ]


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_processes_write_the_single_process_files(tmp_path):
    source = tmp_path / "cfg"
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=4), DDIMScheduler(clip_sample=False)
    ).save_pretrained(source)
    # 14 images of 3 classes in batches of 3: six batches, one of them two classes packed; atom guidance
    # couples each batch's images of one class, so a batch sampled elsewhere would differ
    options = ["--num-samples", "14", "--batch-size", "3", "--steps", "4", "--guidance-scale", "2",
               "--method", "atom:0.5", "--npz"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *atomgen_sample(source, one, *options)], check=True, env=ENV, timeout=600)
    launched = subprocess.run(
        [*LAUNCH, *atomgen_sample(source, two, *options)],
        check=True,
        env=ENV,
        timeout=600,
        capture_output=True,
    )
    assert "on 2 process(es)" in launched.stderr.decode()

    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["images"]) == 14
    assert len({image["batch"] for image in manifest["images"]}) == 6
    assert files(two) == files(one)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_run(tmp_path):
    source = tmp_path / "ddim"
    DDIMPipeline(tiny_unet(), DDIMScheduler()).save_pretrained(source)
    options = ["--num-samples", "60", "--batch-size", "2", "--steps", "100"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        [sys.executable, *atomgen_sample(source, whole, *options)], check=True, env=ENV, timeout=600
    )

    process = subprocess.Popen([sys.executable, *atomgen_sample(source, killed, *options)], env=ENV)
    deadline = time.monotonic() + 300
    while len(list((killed / "images").glob("*.png"))) < 6 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed midway"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list((killed / "images").glob("*.png")))
    assert 6 <= written < 60, written
    assert not json.loads((killed / "manifest.json").read_text())["complete"]

    subprocess.run(
        [sys.executable, *atomgen_sample(source, killed, *options)], check=True, env=ENV, timeout=600
    )
    assert files(killed) == files(whole)
    assert len(list((killed / "images").iterdir())) == 60  # no leftover temporary file


@pytest.mark.slow
def test_compare_under_two_processes_reports_what_one_process_reports(tmp_path):
    source = tmp_path / "cfg"  # ten digit classes and the null label, 8×8 like the digits
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=11), DDIMScheduler(clip_sample=False)
    ).save_pretrained(source)
    options = ["--real", "digits", "--scales", "1", "2", "--method", "atom:50", "--method", "atom:200",
               "--seeds", "2", "--samples-per-class", "6", "--steps", "2", "--device", "cpu", "--no-progress"]  # fmt: skip

    def compare(prefix: list[str], out: Path) -> dict:
        command = [*prefix, "-m", "atomgen", "compare", str(source), "--out", str(out), *options]
        subprocess.run(command, check=True, env=ENV, timeout=600, capture_output=True)
        report = json.loads((out / "report.json").read_text())
        return {key: value for key, value in report.items() if key not in ("config", "machine")}

    assert compare(LAUNCH, tmp_path / "two") == compare([sys.executable], tmp_path / "one")
    assert files(tmp_path / "two" / "samples") == files(tmp_path / "one" / "samples")
