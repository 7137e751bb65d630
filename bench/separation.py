"""Time and memory of ``atomgen.AtomSeparation`` against the naive form and the Gram-product floor.

Run as ``.venv/bin/python bench/separation.py`` (or ``make bench``); ``--help`` lists the options. For token
features ``(B, n, d)`` (float32, requiring grad) it measures one forward + backward of

* **atomgen**: ``AtomSeparation(dim=d, kernel=--kernel)``, otherwise at its defaults (repulsive, on the
  sphere, 256 MB budget);
* **naive**: ``naive_atom_loss`` from ``tests/reference.py``, which materialises every pair (and their
  difference vectors) with autograd; skipped, with its estimated memory, where that exceeds
  ``--naive-limit-gb``;
* **floor**: the bare Gram products of the same size, blockwise: for each block of 1024 rows of
  ``X (B·n, d)``: ``G = X_blk Xᵀ``, then ``gX_blk += G X`` and ``gX += Gᵀ X_blk`` (G standing in for
  ``dL/dG``) — ``6 (B n)² d`` FLOPs, never holding more than ``1024 × B n`` of G (method.md §5).

and, for scale, one DDPM training step of a demo-sized ``UNet2DModel`` against the separation on that
UNet's mid-block output. Times are medians over repetitions interleaved across the forms after one warm-up
run each (a form whose warm-up takes over 20 s is timed by that run alone): wall-clock, or with
``--clock cpu`` this process's CPU time, which with ``--threads 1`` is robust to other load on a shared
machine. Compare the ratios, which come from the same run.

On a loaded machine (the report gives the load average), OpenMP threads that spin at barriers keep the
cores from the threads they wait for, and each parallel region can stall for a scheduler time slice, which
hurts the many mid-sized operations of atomgen far more than the few large products of the floor. There,
run with ``--threads 1 --clock cpu``, or with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (which in
turn costs atomgen some wake-up latency on an idle machine). Peak memory is the most memory the call allocates beyond
what was allocated when it started: on CUDA from ``torch.cuda.max_memory_allocated``, on the CPU from the
allocation events that ``torch.profiler`` records for PyTorch's CPU allocator (buffers that BLAS libraries
allocate for themselves are not seen).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import atomgen
from atomgen.energy import KERNELS

ROOT = Path(__file__).resolve().parents[1]
FLOOR_ROWS = 1024
DEFAULT_KERNEL = inspect.signature(atomgen.AtomSeparation.__init__).parameters["kernel"].default
LOADED_NOTE = (
    " The machine was busy: wall-clock times with several threads then measure the other load too;"
    " see --threads 1 --clock cpu (or OMP_WAIT_POLICY=PASSIVE) in this script's docstring."
)
# A form whose warm-up run takes longer than this (seconds) is timed by that run alone.
SLOW_RUN_S = 20.0
# Peak bytes of the naive reference ≈ (4 d + NAIVE_PAIR_TENSORS) (B n)² × element size: it keeps the
# (B n)² × d difference vectors for backward and makes three more of that size while back-propagating
# through them; the (B n)²-sized pair tensors add a few more (measured: 4d + 1 to 4d + 7 for d = 256 to 1).
NAIVE_PAIR_TENSORS = 8


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    naive_atom_loss = _load_reference()
    load_before = os.getloadavg()
    rows = []
    for n in args.sizes:
        rows.append(_measure_size(args, device, n, naive_atom_loss))
    unet = _measure_unet(args, device, naive_atom_loss)
    rows.append(unet["row"])
    load_after = os.getloadavg()

    lines = [
        f"Machine: {_machine(device)}; torch {torch.__version__}; kernel: {args.kernel}; "
        f"threads: {torch.get_num_threads()} "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); "
        f"1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (this included)."
        + (
            LOADED_NOTE
            if load_before[0] > 0.5 and args.clock == "wall" and torch.get_num_threads() > 1
            else ""
        ),
        "",
        "| size | time atomgen | time naive | time floor | atomgen/floor | peak mem atomgen "
        "| peak mem naive | naive/atomgen mem |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(_table_row(row) for row in rows),
        "",
        f"Forward + backward, float32, {_clock_text(args)}; ¹ a single run (it took over {SLOW_RUN_S:g} s). "
        f"Floor: bare Gram products of X (B·n, d), per {FLOOR_ROWS}-row block G = X_blk Xᵀ, gX_blk += G X, "
        f"gX += Gᵀ X_blk (6 (Bn)² d FLOPs). Naive: tests/reference.py, not run where its estimated "
        f"memory ≈ (4d + {NAIVE_PAIR_TENSORS})·(Bn)²·4 B exceeds {args.naive_limit_gb:g} GiB ('est.'). "
        f"Peak memory: {_memory_method(device)}.",
        "",
        f"UNet step (UNet2DModel {unet['config']}, batch {args.unet_batch}, DDPM ε-MSE + AdamW; median "
        f"of {unet['repeats']} runs): {_ms(unet['step'])}; mid-block output {unet['shape']}. "
        f"AtomSeparation forward + backward on that shape: {_ms(unet['separation'])} = {unet['separation'] / unet['step']:.1%} of the step; "
        f"the step with λ·L_atom attached at the mid block: {_ms(unet['attached'])} "
        f"({unet['attached'] / unet['step'] - 1:+.1%}).",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_int_list, default=[16, 64, 256], help="particles n per atom")
    parser.add_argument("--batch", type=int, default=128, help="atoms B")
    parser.add_argument("--dim", type=int, default=256, help="particle width d")
    parser.add_argument("--kernel", choices=KERNELS, default=DEFAULT_KERNEL, help="AtomSeparation's kernel")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, …")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall-clock time, or this process's CPU time (summed over threads: with --threads 1 it is "
        "robust to other load on the machine)",
    )
    parser.add_argument("--naive-limit-gb", type=float, default=8.0, help="skip the naive form above this")
    parser.add_argument("--unet-batch", type=int, default=128, help="batch of the UNet training step")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    args.timer = time.perf_counter if args.clock == "wall" else time.process_time
    if args.quick:
        args.sizes, args.batch, args.dim, args.repeats, args.unet_batch = [4, 16], 16, 32, 2, 16
    return args


def _int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def _load_reference() -> Callable:
    """``naive_atom_loss`` from tests/reference.py, imported by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("atomgen_bench_reference", ROOT / "tests" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.naive_atom_loss


# ------------------------------------------------------------------------------------------ measuring
def _measure_size(args, device, n, naive_atom_loss) -> dict:
    torch.manual_seed(0)
    features = torch.randn(args.batch, n, args.dim, device=device)
    label = f"B={args.batch} n={n} d={args.dim}"
    print(f"measuring {label} …", file=sys.stderr, flush=True)
    return _measure(args, device, features, label, naive_atom_loss)


def _measure(args, device, features: torch.Tensor, label: str, naive_atom_loss) -> dict:
    """Times and peak memory of the three forms on ``features`` ((B, C, H, W) or (B, n, d))."""
    width = features.shape[1] if features.ndim == 4 else features.shape[-1]
    sep = atomgen.AtomSeparation(dim=width, kernel=args.kernel).to(device)
    leaf = features.detach().clone().requires_grad_(True)
    particles, _, _ = sep.tokenize(leaf.detach())
    count, width = particles.shape[0] * particles.shape[1], particles.shape[2]
    flat = particles.reshape(count, width).contiguous()

    def run_atomgen():
        sep(leaf).loss.backward()
        leaf.grad = None
        sep.zero_grad(set_to_none=True)

    def run_naive():
        naive_atom_loss(sep, leaf)[0].backward()
        leaf.grad = None
        sep.zero_grad(set_to_none=True)

    naive_bytes = (4 * width + NAIVE_PAIR_TENSORS) * count**2 * features.element_size()
    fits = naive_bytes <= args.naive_limit_gb * 2**30
    if fits and device.type != "cpu":  # the reference is written for the CPU (its torch.eye, say)
        try:
            run_naive()
        except RuntimeError as error:
            print(f"naive reference failed on {device}: {error}", file=sys.stderr)
            fits = False
    runs = {"atomgen": run_atomgen, "floor": lambda: _floor(flat)}
    if fits:
        runs["naive"] = run_naive
    times = _time_interleaved(runs, args.repeats, args.timer, device)
    row = {"label": label, "times": times, "naive_bytes": naive_bytes, "naive_fits": fits}
    row["mem_atomgen"] = _peak_bytes(run_atomgen, device)
    row["mem_naive"] = _peak_bytes(run_naive, device) if fits else None
    return row


def _floor(x: torch.Tensor) -> torch.Tensor:
    """The bare Gram products of method.md §5, blockwise (see the module docstring)."""
    grad = torch.zeros_like(x)
    for start in range(0, x.shape[0], FLOOR_ROWS):
        block = x[start : start + FLOOR_ROWS]
        gram = block @ x.T
        grad[start : start + FLOOR_ROWS].addmm_(gram, x)
        grad.addmm_(gram.T, block)
    return grad


def _time_interleaved(runs: dict[str, Callable], repeats: int, clock, device) -> dict[str, list[float]]:
    """Seconds per run, the forms interleaved after one warm-up run each; a form whose warm-up run took
    longer than SLOW_RUN_S is not repeated, that run is its only measurement."""
    first = {name: _timed(fn, clock, device) for name, fn in runs.items()}
    times = {name: [seconds] for name, seconds in first.items() if seconds > SLOW_RUN_S}
    again = {name: fn for name, fn in runs.items() if name not in times}
    times.update({name: [] for name in again})
    for _ in range(repeats):
        for name, fn in again.items():
            times[name].append(_timed(fn, clock, device))
    return times


def _timed(fn: Callable, clock, device) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(fn: Callable, device) -> int:
    """Most bytes allocated during ``fn`` beyond those allocated when it started (see the docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # sorted() is stable for equal stamps
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _clock_text(args) -> str:
    kind = "wall-clock" if args.clock == "wall" else "process CPU time"
    return f"{kind}, median of {args.repeats} interleaved runs after a warm-up run"


def _memory_method(device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the call, less what was allocated before it"
    return (
        "running sum of the CPU allocator's allocation/free events recorded by torch.profiler "
        "(profile_memory=True) during the call, its maximum; inputs and parameters allocated before are "
        "not counted, the gradients made are"
    )


def _measure_unet(args, device, naive_atom_loss) -> dict:
    """One DDPM training step of a demo-sized UNet2DModel, and the separation at its mid block."""
    from atomgen.train.config import ExperimentConfig
    from atomgen.train.models import build_model, build_scheduler

    print("measuring the UNet step …", file=sys.stderr, flush=True)
    model_config = ExperimentConfig.from_yaml(
        Path(__file__).parent.parent / "configs" / "digits-ddpm.yaml"
    ).model
    torch.manual_seed(0)
    unet = build_model(model_config, (1, 8, 8)).to(device)
    scheduler = build_scheduler(model_config)
    captured = {}
    unet.mid_block.register_forward_hook(lambda module, inputs, output: captured.__setitem__("mid", output))
    separation = atomgen.AtomSeparation(dim=model_config.block_out_channels[-1], kernel=args.kernel)
    separation = separation.to(device)
    params = list(unet.parameters()) + [p for p in separation.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(args.unet_batch, 1, 8, 8, device=device)

    def step(attached: bool) -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (args.unet_batch,), device=device)
        loss = F.mse_loss(unet(scheduler.add_noise(images, noise, t), t).sample, noise)
        if attached:
            loss = loss + 0.1 * separation(captured["mid"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(False)
    mid = captured["mid"].detach()
    leaf = mid.clone().requires_grad_(True)

    def run_separation():
        separation(leaf).loss.backward()
        leaf.grad = None
        separation.zero_grad(set_to_none=True)

    runs = {"step": lambda: step(False), "attached": lambda: step(True), "separation": run_separation}
    repeats = max(args.repeats, 5)
    times = _time_interleaved(runs, repeats, args.timer, device)
    label = f"UNet mid-block {tuple(mid.shape)}"
    print(f"measuring {label} …", file=sys.stderr, flush=True)
    row = _measure(args, device, mid, label, naive_atom_loss)
    blocks = "/".join(t.removesuffix("Block2D") for t in unet.config.down_block_types)
    return {
        "row": row,
        "config": f"8×8×1, widths {tuple(unet.config.block_out_channels)}, {blocks} down, configs/digits-ddpm.yaml",
        "shape": "×".join(str(s) for s in mid.shape),
        "repeats": repeats,
        **{name: statistics.median(values) for name, values in times.items()},
    }


# ------------------------------------------------------------------------------------------ reporting
def _table_row(row: dict) -> str:
    """One Markdown row; ¹ marks a time from a single run (see _time_interleaved)."""
    times = {name: statistics.median(values) for name, values in row["times"].items()}

    def cell(name: str) -> str:
        return _ms(times[name]) + ("¹" if len(row["times"][name]) == 1 else "")

    naive_time = cell("naive") if "naive" in times else "does not fit"
    if row["mem_naive"] is not None:
        naive_mem, naive_ref, estimated = _bytes(row["mem_naive"]), row["mem_naive"], ""
    else:
        naive_mem, naive_ref, estimated = f"est. {_bytes(row['naive_bytes'])}", row["naive_bytes"], "est. "
    return (
        f"| {row['label']} | {cell('atomgen')} | {naive_time} | {cell('floor')} "
        f"| {times['atomgen'] / times['floor']:.2f} | {_bytes(row['mem_atomgen'])} | {naive_mem} "
        f"| {estimated}{naive_ref / max(row['mem_atomgen'], 1):,.0f}× |"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _bytes(count: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 2**10:,.0f} KiB"


def _machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


if __name__ == "__main__":
    main()
