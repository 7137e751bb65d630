"""The ``atomgen eval`` command line: its options (:func:`add_eval_arguments`) and what runs them
(:func:`eval_command`, which calls :func:`~atomgen.eval.run.run_eval`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .features import EXTRACTORS
from .hub_features import CLIP_ID, DINOV2_ID
from .run import ALL_METRICS, run_eval
from .vae import ACTIVE_THRESHOLD

__all__ = ["EXAMPLES", "add_eval_arguments", "eval_command"]

EXAMPLES = f"""examples:
  atomgen eval --real digits --fake runs/demo/atom --out runs/demo/eval
  atomgen eval --real real_pngs/ --fake fake_pngs/ --metrics fid prdc vendi --extractor inception
  atomgen eval --real mnist5k --fake samples.npz --metrics mode_coverage lpips_diversity
  atomgen eval --real digits --fake runs/digits-vae --out runs/digits-vae/eval   # a VAE: prior samples + VAE scores
  atomgen eval --real mnist5k --fake runs/mnist5k-cfg --guidance-scale 2   # class-conditional: balanced classes,
                                                                          # per-class scores, class accuracy
  atomgen eval --real imagenet_val/ --fake samples/ --extractor dinov2   # FD_DINOv2 and PRDC as dgm-eval
  atomgen eval --fake out/ --clip-weights clip-vit-l-14/   # out/manifest.json of `atomgen sample --prompts`:
                                                            # CLIP score, diversity within each prompt

DINOv2 and CLIP weights load through transformers from a hub id ({DINOV2_ID}, {CLIP_ID}) or a folder
saved with save_pretrained; offline, download them first (huggingface-cli download ID).
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``atomgen eval`` options to ``parser`` (one line each, defaults shown in ``--help``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--real",
        default=None,
        help="folder, .npz, dataset name (digits, mnist5k, fashion-mnist) or run directory; optional when "
        "only prompt metrics are scored",
    )
    parser.add_argument(
        "--fake",
        required=True,
        help="folder, .npz, dataset name, run directory (a DDPM's, a class-conditional model's or a VAE's), "
        "or a folder with the manifest.json of `atomgen sample`",
    )
    parser.add_argument(
        "--metrics", nargs="+", choices=ALL_METRICS, default=None, help="default: all that apply"
    )
    parser.add_argument("--extractor", default="auto", choices=("auto", *EXTRACTORS), help="default: auto")
    parser.add_argument(
        "--extractor-weights",
        default=None,
        help="dinov2/clip extractor: hub id or local folder (default: ViT-L/14)",
    )
    parser.add_argument(
        "--clip-weights",
        default=None,
        help=f"CLIP model of the CLIP score: hub id or folder (default: {CLIP_ID})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("eval-report"), help="report folder (default: eval-report)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when present)")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: none)")
    parser.add_argument("--k", type=int, default=5, help="nearest neighbours for PRDC (default: 5)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=256,
        help="samples drawn from a run's pipeline or VAE prior; class-conditional: rounded up to balanced "
        "classes (default: 256)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps for those samples (default: the pipeline's)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="CFG scale for a class-conditional pipeline's samples (default: the pipeline's)",
    )
    parser.add_argument(
        "--active-threshold",
        type=float,
        default=ACTIVE_THRESHOLD,
        help=f"VAE: posterior-mean variance of an active latent unit (default: {ACTIVE_THRESHOLD})",
    )
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out image files that cannot be decoded; the report lists them",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def eval_command(args: argparse.Namespace) -> dict:
    """Run ``atomgen eval`` from parsed arguments; user errors raise ``ValueError``/``FileNotFoundError``/``OSError``."""
    return run_eval(
        args.real,
        args.fake,
        args.metrics,
        args.extractor,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache_dir=args.cache,
        k=args.k,
        num_samples=args.num_samples,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        active_threshold=args.active_threshold,
        extractor_weights=args.extractor_weights,
        clip_weights=args.clip_weights,
        skip_unreadable=args.skip_unreadable,
        progress=not args.no_progress,
    )
