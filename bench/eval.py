"""Benchmark atomgen.eval against the peers it replaces, in one run; prints times, ratios and agreement.

    python bench/eval.py            # the sizes of the issue (minutes on 2 CPU cores)
    python bench/eval.py --quick    # smaller sizes, a smoke test
    python bench/eval.py --only dinov2 clip   # the DINOv2 / CLIP extractors against the plain forward

Each row times atomgen's function and its peer on the same inputs and reports how far their results
differ. The lpips package's pairwise loop over all N(N−1)/2 pairs of N = 256 images takes a quarter of an
hour on 2 CPU cores, so by default it is timed on a random sample of the pairs and scaled to all of them
(its cost is the same for every pair; ``--full-lpips-peer`` times every pair).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("bench.eval")


@dataclass
class Row:
    name: str
    ours_s: float
    peer: str
    peer_s: float
    agreement: str

    @property
    def ratio(self) -> float:
        return self.peer_s / self.ours_s


def _timed(fn: Callable[[], object], repeat: int = 1) -> tuple[object, float]:
    """Result and the fastest of ``repeat`` wall-clock times."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


# --- all-pairs LPIPS ------------------------------------------------------------------------------------


def bench_lpips(n: int, size: int, peer_pairs: int | None, batch_pairs: int = 64) -> Row:
    import lpips

    from atomgen.eval import LPIPSFeatures, lpips_diversity
    from atomgen.eval.lpips import load_alexnet_trunk

    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours = LPIPSFeatures()
    lpips_diversity(images[:4], extractor=ours, progress=False)  # warm-up
    result, ours_s = _timed(lambda: lpips_diversity(images, extractor=ours, batch_size=64, progress=False))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    trunk, _ = load_alexnet_trunk()
    slices = {0: "slice1.0", 3: "slice2.3", 6: "slice3.6", 8: "slice4.8", 10: "slice5.10"}
    peer.net.load_state_dict(
        {f"{slices[i]}.{p}": trunk[f"features.{i}.{p}"] for i in slices for p in ("weight", "bias")}
    )
    i, j = np.triu_indices(n, 1)
    total_pairs = len(i)
    if peer_pairs is not None and peer_pairs < total_pairs:
        pick = np.random.default_rng(0).choice(total_pairs, peer_pairs, replace=False)
        i, j = i[pick], j[pick]
    x = images * 2 - 1

    def loop() -> np.ndarray:
        values = []
        with torch.no_grad():
            for start in range(0, len(i), batch_pairs):
                a, b = i[start : start + batch_pairs], j[start : start + batch_pairs]
                values.append(peer(x[a], x[b]).flatten())
        return torch.cat(values).double().numpy()

    peer(x[:2], x[2:4])  # warm-up
    values, peer_s = _timed(loop)
    scale = total_pairs / len(i)
    # Agreement: our exact pairwise values on the same pairs (from the same one-pass features).
    with torch.no_grad():
        g = ours(images).double()
    ours_values = (g[torch.from_numpy(i)] - g[torch.from_numpy(j)]).square().sum(1).numpy()
    note = f"max |Δ| over {len(i)} pairs {np.abs(ours_values - values).max():.1e}; mean {result.mean:.5f}" + (
        f"; peer timed on {len(i)} of {total_pairs} pairs, scaled ×{scale:.1f}" if scale > 1 else ""
    )
    return Row(f"all-pairs LPIPS, N={n}, {size}×{size}", ours_s, "lpips pairwise loop", peer_s * scale, note)


# --- Fréchet distance -----------------------------------------------------------------------------------


def bench_frechet(d: int, n: int) -> Row:
    from cleanfid.fid import frechet_distance as peer

    from atomgen.eval import frechet_distance

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    x, y = rng.normal(size=(n, d)) @ mixing, rng.normal(size=(n, d)) @ (mixing * 1.1) + 0.1
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ours, ours_s = _timed(lambda: frechet_distance(mu1, s1, mu2, s2), repeat=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, peer_s = _timed(lambda: peer(mu1, s1, mu2, s2))
    note = f"relative |Δ| {abs(ours - reference) / abs(reference):.1e} (FID {ours:.4f})"
    return Row(f"Fréchet distance, d={d}", ours_s, "scipy.linalg.sqrtm (clean-fid)", peer_s, note)


# --- Vendi ----------------------------------------------------------------------------------------------


def bench_vendi(n: int, d: int) -> Row:
    from atomgen.eval import vendi

    x = np.random.default_rng(0).normal(size=(n, d)) + 0.3

    def primal() -> float:  # the N × N form of the Vendi-Score package
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        eigenvalues = np.linalg.eigvalsh(unit @ unit.T / n)
        eigenvalues = eigenvalues[eigenvalues > 1e-15]
        return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))

    ours, ours_s = _timed(lambda: vendi(x), repeat=2)
    reference, peer_s = _timed(primal, repeat=2)
    note = f"relative |Δ| {abs(ours - reference) / reference:.1e} (Vendi {ours:.2f})"
    return Row(f"Vendi, N={n}, d={d}", ours_s, "N×N eigendecomposition", peer_s, note)


# --- PRDC -----------------------------------------------------------------------------------------------


def bench_prdc(n: int, d: int) -> Row | None:
    try:
        import prdc as peer
    except ImportError:
        logger.warning("prdc is not installed (`pip install prdc`); skipping its row")
        return None
    from atomgen.eval import prdc

    rng = np.random.default_rng(0)
    real, fake = (
        rng.normal(size=(n, d)).astype(np.float32),
        (rng.normal(size=(n, d)) * 1.1).astype(np.float32),
    )
    ours, ours_s = _timed(lambda: prdc(real, fake, k=5))
    reference, peer_s = _timed(lambda: peer.compute_prdc(real_features=real, fake_features=fake, nearest_k=5))
    diff = max(
        abs(getattr(ours, key) - reference[key]) for key in ("precision", "recall", "density", "coverage")
    )
    return Row(f"PRDC, N=M={n}, d={d}", ours_s, "prdc package", peer_s, f"max |Δ| {diff:.1e}")


# --- Inception features ---------------------------------------------------------------------------------


def bench_inception(n: int, size: int) -> Row:
    from cleanfid.fid import get_folder_features
    from PIL import Image

    from atomgen.eval import compute_features, load_inception

    extractor = load_inception()
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for index in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                f"{folder}/{index:04d}.png"
            )
        with torch.no_grad():  # TorchScript profiles and optimises its first calls of a shape: warm both
            for _ in range(3):
                extractor.network(torch.zeros(32, 3, 299, 299))
        ours, ours_s = _timed(
            lambda: compute_features(folder, extractor, batch_size=32, progress=False), repeat=2
        )

        def model(batch: torch.Tensor) -> torch.Tensor:  # clean-fid's InceptionV3W on the same network
            return extractor.network((batch - 128) / 128).reshape(len(batch), -1)

        reference, peer_s = _timed(
            lambda: get_folder_features(
                folder,
                model=model,
                num_workers=0,
                batch_size=32,
                device=torch.device("cpu"),
                mode="clean",
                verbose=False,
            ),
            repeat=2,
        )
    diff = np.abs(ours.features - reference).max()
    note = f"{n / ours_s:.1f} vs {n / peer_s:.1f} images/s; max |Δ feature| {diff:.1e}"
    return Row(f"Inception features, {n} PNGs {size}×{size}", ours_s, "clean-fid folder path", peer_s, note)


# --- DINOv2 and CLIP features ---------------------------------------------------------------------------

# ViT sizes built from configs (throughput does not depend on the weights' values): S for --quick, L as
# dgm-eval and the CLIP score use.
VIT = {
    "S": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def _hub_extractor(kind: str, vit: str):
    """A randomly initialised DINOv2 or CLIP ViT-``vit``/14 inside atomgen's extractor."""
    from atomgen.eval import CLIPFeatures, DINOv2Features

    torch.manual_seed(0)
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        model = Dinov2Model(Dinov2Config(patch_size=14, image_size=518, **VIT[vit])).eval()
        return DINOv2Features(model, f"random ViT-{vit}/14")
    from transformers import CLIPConfig, CLIPModel

    vision = dict(patch_size=14, image_size=224, **VIT[vit])
    text = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).eval()
    return CLIPFeatures(model, None, f"random ViT-{vit}/14")


def bench_hub(kind: str, n: int, size: int, vit: str, batch_size: int = 16, repeat: int = 3) -> Row:
    """atomgen's extractor over a source (batching, preprocessing, statistics) against the plain loop of
    the transformers forward it wraps, on the same images and the same preprocessing."""
    from atomgen.eval import compute_features

    extractor = _hub_extractor(kind, vit)
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def plain() -> np.ndarray:
        model, chunks = extractor.model, []
        for batch in images.split(batch_size):
            pixels = extractor.preprocess(batch)
            if kind == "dinov2":
                out = model(pixel_values=pixels).pooler_output
            else:
                out = model.get_image_features(pixel_values=pixels)
                out = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
            chunks.append(out.float().numpy())
        return np.concatenate(chunks)

    plain()  # warm-up
    ours_s = peer_s = float("inf")
    for _ in range(repeat):  # interleaved, the fastest of each: load on a shared machine hits both alike
        ours, seconds = _timed(
            lambda: compute_features(images, extractor, batch_size=batch_size, progress=False)
        )
        ours_s = min(ours_s, seconds)
        reference, seconds = _timed(plain)
        peer_s = min(peer_s, seconds)
    diff = np.abs(ours.features - reference).max()
    note = f"{n / ours_s:.2f} vs {n / peer_s:.2f} images/s; max |Δ feature| {diff:.1e}"
    name = f"{kind} ViT-{vit}/14 features, {n} images {size}×{size}"
    return Row(name, ours_s, "plain transformers forward", peer_s, note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--full-lpips-peer", action="store_true", help="time the lpips loop on every pair")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("lpips", "frechet", "vendi", "prdc", "inception", "dinov2", "clip"),
        help="run these rows only",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads for both sides (default: 1)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from threadpoolctl import threadpool_limits

    # One thread each by default: on a small shared machine multi-threaded BLAS timings swing severalfold.
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    quick = args.quick
    benches = {
        "lpips": lambda: bench_lpips(
            64 if quick else 256, 64, None if args.full_lpips_peer else (256 if quick else 2048)
        ),
        "frechet": lambda: bench_frechet(256 if quick else 2048, 512 if quick else 4096),
        "vendi": lambda: bench_vendi(512 if quick else 4096, 256 if quick else 2048),
        "prdc": lambda: bench_prdc(512 if quick else 4096, 64 if quick else 2048),
        "inception": lambda: bench_inception(8 if quick else 32, 64),
        "dinov2": lambda: bench_hub("dinov2", 16, 64, "S" if quick else "L"),
        "clip": lambda: bench_hub("clip", 16, 64, "S" if quick else "L"),
    }
    rows = [benches[name]() for name in args.only or benches]
    rows = [row for row in rows if row is not None]
    threads = torch.get_num_threads()
    print(
        f"\nmachine: {platform.machine()} CPU, {threads} thread(s) for torch and BLAS, torch {torch.__version__}\n"
    )
    print("| benchmark | atomgen (s) | peer | peer (s) | ratio | agreement |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.name} | {row.ours_s:.3f} | {row.peer} | {row.peer_s:.3f} | {row.ratio:.1f}× | {row.agreement} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(r), "ratio": r.ratio} for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
