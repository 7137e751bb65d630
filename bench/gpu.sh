#!/usr/bin/env bash
# The prepared GPU check: one run, well under 8 minutes on one CUDA GPU.
#
#   bench/gpu.sh RESULTS_DIR             on a CUDA machine (fails fast without one)
#   bench/gpu.sh RESULTS_DIR --dry-run   tiny sizes on the CPU: checks that every step runs
#   bench/gpu.sh RESULTS_DIR --cfg       instead: the classifier-free guidance benchmark at its GPU preset
#                                        (bench/cfg.py --preset gpu: 5 seeds, 500 samples per class, 25
#                                        steps; the baseline and the three trained variants per seed,
#                                        autoguidance from the baseline's step-500/1000 snapshots; hours)
#   bench/gpu.sh RESULTS_DIR --cfg-flow  instead: the same on the class-conditional DiT rectified flows
#                                        (bench/cfg.py --model flow-dit --preset gpu; no trained variants,
#                                        autoguidance from the step-500/1000 snapshots)
#   bench/gpu.sh RESULTS_DIR --attribution   instead: the attribution benchmark at its GPU preset
#                                        (bench/attribution.py --preset gpu: 5 seeds per dataset, then
#                                        two separation variants against it; long)
#   bench/gpu.sh RESULTS_DIR --vae       instead: the VAE benchmark at its GPU preset (bench/vae.py
#                                        --preset gpu: the configs' own sizes, 4 λ per method; hours)
#
# 1. the device; 2. AtomSeparation at B=256, n=256, d=512 against the bare Gram products (time, memory);
# 3. a short mnist5k DDPM training, baseline and atom separation, at a GPU batch size; 4. Inception
# feature throughput. Details go to RESULTS_DIR; a compact table is printed last.
set -euo pipefail

out=${1:?usage: bench/gpu.sh RESULTS_DIR [--dry-run]}
mode=${2:-}
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"

if [ "$mode" = "--cfg" ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    exec "$py" bench/cfg.py --out "$out/cfg" --preset gpu --results "$out/cfg"
fi

if [ "$mode" = "--cfg-flow" ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    exec "$py" bench/cfg.py --out "$out/cfg-flow" --model flow-dit --preset gpu --datasets mnist5k \
        --results "$out/cfg-flow"
fi

if [ "$mode" = "--attribution" ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    "$py" bench/attribution.py --out "$out/attribution" --preset gpu --results "$out/attribution"
    # the variants of the README's table, each against the defaults, seed by seed
    for variant in "commit05|separation.options={commitment_weight: 0.05}" \
        "deviation|separation.options={commitment_weight: 0.05, role_input: deviation}"; do
        name=${variant%%|*}
        "$py" bench/attribution.py --out "$out/attribution-$name" --preset gpu --set "${variant#*|}" \
            --versus "$out/attribution" --results "$out/attribution-variants/$name"
    done
    exit 0
fi

if [ "$mode" = "--vae" ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    exec "$py" bench/vae.py --out "$out/vae" --preset gpu --results "$out/vae"
fi

if [ "$mode" = "--dry-run" ]; then
    device=cpu
    separation=(--quick --device cpu)
    train=(--set train.steps=4 --set train.batch_size=16 --set data.limit=64 --set model.block_out_channels=[8,16]
           --set model.norm_num_groups=4 --set train.checkpoint_every=100)
    images=16
else
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --dry-run')"
    device=cuda
    separation=(--device cuda --batch 256 --sizes 256 --dim 512 --repeats 3 --unet-batch 512)
    train=(--set train.steps=400 --set train.batch_size=512 --set train.mixed_precision=bf16
           --set train.checkpoint_every=1000 --set train.log_every=50)
    images=2048
fi

echo "== 1. device" >&2
"$py" - >"$out/device.txt" <<'EOF'
import platform, torch
print("torch", torch.__version__, "| python", platform.python_version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
else:
    print("device: CPU only (dry run)")
EOF
cat "$out/device.txt" >&2

echo "== 2. separation benchmark" >&2
"$py" bench/separation.py "${separation[@]}" --out "$out/separation.md" >"$out/separation.log" 2>&1

echo "== 3. mnist5k training, baseline and atom" >&2
for method in none atom; do
    start=$(date +%s)
    "$py" -m atomgen train configs/mnist5k-ddpm.yaml "${train[@]}" --set "separation.method=$method" \
        --set "train.output_dir=$out/train-$method" >"$out/train-$method.log" 2>&1
    echo "$(( $(date +%s) - start ))" >"$out/train-$method.seconds"
done

echo "== 4. Inception feature throughput" >&2
"$py" - "$device" "$images" >"$out/inception.txt" <<'EOF'
import sys, time, torch
from atomgen.eval import compute_features, load_extractor
device, count = sys.argv[1], int(sys.argv[2])
extractor = load_extractor("inception", device=device)
images = torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(0))
compute_features(images[:64], extractor, batch_size=64, progress=False)  # warm-up
if device == "cuda":
    torch.cuda.synchronize()
start = time.perf_counter()
compute_features(images, extractor, batch_size=256 if device == "cuda" else 16, progress=False)
if device == "cuda":
    torch.cuda.synchronize()
print(f"{count / (time.perf_counter() - start):.1f}")
EOF

echo "== summary" >&2
"$py" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(out.joinpath("device.txt").read_text().strip().splitlines()[-1])
print()
print("| check | result |")
print("|---|---|")
for line in out.joinpath("separation.md").read_text().splitlines():
    if line.startswith("| B=") or line.startswith("| UNet"):
        cells = [c.strip() for c in line.strip("|").split("|")]
        print(f"| separation {cells[0]} | {cells[1]} vs floor {cells[3]} ({cells[4]}×), peak {cells[5]} |")
for method in ("none", "atom"):
    log = [json.loads(x) for x in out.joinpath(f"train-{method}/metrics.jsonl").read_text().splitlines()]
    seconds = out.joinpath(f"train-{method}.seconds").read_text().strip()
    last = log[-1]
    extra = f", L_atom {last['L_atom']:.3g}" if "L_atom" in last else ""
    print(f"| mnist5k {method} | {last['step']} steps in {seconds} s, L_task {last['L_task']:.4f}{extra} |")
print(f"| Inception features | {out.joinpath('inception.txt').read_text().strip()} images/s |")
EOF
