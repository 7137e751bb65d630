"""Benchmark ``atomgen sample``: its throughput against a plain loop of ``pipe(...)``, and 2 processes
against 1.

    python bench/sample.py --out runs/bench-sample             # both parts (minutes on 2 CPU cores)
    python bench/sample.py --out runs/bench-sample --part overhead --images 64 --steps 10

The model is the CFG benchmark's (configs/mnist5k-cfg.yaml: a class-conditional 16×16 UNet2DModel,
block_out_channels (32, 64), ten classes; untrained weights: the cost is the same), in
``AtomClassConditionalPipeline`` at w = 1.5 (a doubled batch), saved to ``--out`` and loaded by path.

1. **Overhead** (target: ``atomgen sample`` ≥ 0.95× the loop's throughput). The same batches
   (:func:`atomgen.sampling.plan_batches`), sampled by :func:`atomgen.sampling.sample` (PNG files, the
   manifest, the seeded noise streams) and by a plain Python loop of ``pipe(...)`` that keeps the images
   in memory; plain, and with atom guidance installed (``--method atom:0.1`` against
   ``install_methods`` in the loop). The two are timed in turn within each round, after a warm-up
   round, so that a machine shared with other work loads them alike; the ratio is the median of the
   rounds' ratios (loop time / sample time), in wall time and in CPU time (``time.process_time``,
   which counts the PNG writer thread's work; on a shared machine it varies far less).
2. **Processes** (target: 2 processes < 0.65× the wall time of 1, identical files).
   ``python -m atomgen sample`` against ``accelerate launch --multi_gpu --num_processes 2 -m atomgen
   sample`` (on a machine without GPUs, torchrun's processes on the CPU), both with OMP_NUM_THREADS=1,
   wall time of the whole command (start-up and loading included), then the files compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.pipelines.methods import install_methods, parse_method
from atomgen.sampling import PipelineCall, SampleConfig, plan_batches, sample
from atomgen.seeding import generator
from atomgen.train.config import ExperimentConfig
from atomgen.train.models import build_model

logger = logging.getLogger("bench.sample")

CFG_CONFIG = Path(__file__).parent.parent / "configs" / "mnist5k-cfg.yaml"
GUIDANCE_SCALE = 1.5
METHOD = "atom:0.1"


def build_pipeline(folder: Path) -> Path:
    """The CFG benchmark's model in ``AtomClassConditionalPipeline``, saved to ``folder``."""
    torch.manual_seed(0)
    model = ExperimentConfig.from_yaml(CFG_CONFIG).model
    unet = build_model(model, (1, 16, 16)).eval()
    AtomClassConditionalPipeline(unet, DDIMScheduler(prediction_type=model.objective)).save_pretrained(folder)
    return folder


# --- 1. Overhead ----------------------------------------------------------------------------------------


def loop(pipe, config: SampleConfig) -> None:
    """The plain loop: the same batches as ``sample``, one ``pipe(...)`` each, the images kept in memory."""
    call = PipelineCall.of(pipe, steps=config.steps, guidance_scale=config.guidance_scale)
    batches = plan_batches(call.conditionings(config.num_samples), config.batch_size)
    handles = install_methods(pipe, [parse_method(m) for m in config.methods]) if config.methods else []
    try:
        for batch in batches:
            pipe(**call.arguments(batch), generator=generator(config.seed, "initial-noise", batch.index))
    finally:
        for handle in handles:
            handle.remove()


def bench_overhead(folder: Path, out: Path, images: int, steps: int, batch_size: int, repeats: int) -> dict:
    pipe = AtomClassConditionalPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    rows = {}
    for label, methods in (("plain", ()), ("with " + METHOD, (METHOD,))):
        config = SampleConfig(
            str(folder), out / "overhead", num_samples=images, steps=steps, guidance_scale=GUIDANCE_SCALE,
            batch_size=batch_size, methods=methods, device="cpu", progress=False,
        )  # fmt: skip
        times: dict[str, list[float]] = {"loop": [], "sample": []}
        cpu: dict[str, list[float]] = {"loop": [], "sample": []}  # the writer thread's time included
        for round_ in range(repeats + 1):  # round 0 warms up
            for name in times:
                shutil.rmtree(config.out, ignore_errors=True)
                start, start_cpu = time.perf_counter(), time.process_time()
                loop(pipe, config) if name == "loop" else sample(config, pipe=pipe)
                if round_ > 0:
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        ratios = [a / b for a, b in zip(times["loop"], times["sample"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu["loop"], cpu["sample"], strict=True)]
        rows[label] = {
            "loop_s": statistics.median(times["loop"]),
            "sample_s": statistics.median(times["sample"]),
            "throughput_ratio": statistics.median(ratios),
            "ratios": ratios,
            "cpu_loop_s": statistics.median(cpu["loop"]),
            "cpu_sample_s": statistics.median(cpu["sample"]),
            "cpu_ratio": statistics.median(cpu_ratios),
        }
        logger.info("overhead, %s: %s", label, rows[label])
    shutil.rmtree(out / "overhead", ignore_errors=True)
    return rows


# --- 2. Processes ---------------------------------------------------------------------------------------


def bench_processes(folder: Path, out: Path, images: int, steps: int, batch_size: int) -> dict:
    options = ["--num-samples", str(images), "--steps", str(steps), "--batch-size", str(batch_size),
               "--guidance-scale", str(GUIDANCE_SCALE), "--method", METHOD, "--device", "cpu", "--no-progress"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    walls = {}
    for name, prefix in (("1 process", [sys.executable]), ("2 processes", launch)):
        target = out / name.replace(" ", "-")
        shutil.rmtree(target, ignore_errors=True)
        command = [*prefix, "-m", "atomgen", "sample", str(folder), "--out", str(target), *options]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        walls[name] = time.perf_counter() - start
        logger.info("processes, %s: %.1f s", name, walls[name])

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    identical = files(out / "1-process") == files(out / "2-processes")
    return {"wall_s": walls, "ratio": walls["2 processes"] / walls["1 process"], "identical_files": identical}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, help="working folder; sample.json is written there"
    )
    parser.add_argument("--part", choices=("overhead", "processes", "both"), default="both")
    parser.add_argument("--images", type=int, default=64, help="overhead: images per run")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="overhead: timed rounds")
    parser.add_argument("--process-images", type=int, default=512, help="processes: images per run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    torch.set_num_threads(1)  # as each of the two processes runs; the overhead ratio is per core
    folder = build_pipeline(args.out / "pipeline")
    report: dict = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}}
    if args.part in ("overhead", "both"):
        report["overhead"] = bench_overhead(
            folder, args.out, args.images, args.steps, args.batch_size, args.repeats
        )
    if args.part in ("processes", "both"):
        report["processes"] = bench_processes(
            folder, args.out, args.process_images, args.steps, args.batch_size
        )
    (args.out / "sample.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
