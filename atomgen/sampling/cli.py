"""The ``atomgen sample`` subcommand: its options, and their mapping onto :class:`SampleConfig`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .loading import DTYPES
from .sampler import SampleConfig, sample

SAMPLE_EPILOG = """\
examples:
  atomgen sample runs/cfg/mnist5k/seed0/model --out samples/plain --num-samples 1000 --guidance-scale 2
  atomgen sample runs/cfg/mnist5k/seed0/model --out samples/atom --num-samples 1000 --method atom:0.2
  atomgen sample my-dit/ --out samples/dit --num-samples 64 --class-labels 207,360 --steps 25 --npz
  atomgen sample my-sd/ --out samples/sd --prompts prompts.txt --per-prompt 8 --method atom:0.02 \\
      --method interval:0.2 --dtype fp16
  accelerate launch --num_processes 4 -m atomgen sample my-dit/ --out samples/dit --num-samples 50000

Rerun the same command to resume: finished batches are skipped. Images are a function of the seed,
the batch index and the settings, so any number of processes writes the same files. On a machine
without GPUs, `accelerate launch --multi_gpu --num_processes P` starts P processes on the CPU.
"""

COMPARE_EPILOG = """\
examples:
  atomgen compare runs/cfg/mnist5k/seed0/model --real mnist5k --out runs/compare --scales 1 1.5 2 3 \\
      --method atom:0.05 --method atom:0.1 --method atom:0.2 --method pg:0.1 --seeds 3
  accelerate launch --num_processes 4 -m atomgen compare my-dit/ --real mnist5k --out runs/compare
  atomgen compare facebook/DiT-XL-2-256 --real imagenet-val.npz --classifier google/vit-base-patch16-224 \\
      --class-labels 88,207,279,360,387,417,974,979 --samples-per-class 32 --out runs/compare-dit \\
      --scales 1.5 2.5 4 --method atom:0.1 --method pg:0.1 --steps 50 --dtype fp16
  atomgen compare my-sd/ --prompts prompts.txt --per-prompt 8 --out runs/compare-sd --scales 1.5 3 5 7.5 \\
      --method atom:0.02 --method pg:0.1 --dtype fp16
  atomgen compare my-sd/ --prompts prompts.txt --per-prompt 16 --real samples/reference --out runs/sd

Class pipelines are scored per class against --real: a dataset atomgen ships a classifier for, or your
own labelled images (a .npz with images and labels, a folder of `atomgen sample`) with --classifier,
whose output index is the class label (DiT's labels are ImageNet-1k ids). Prompt pipelines are scored
on the CLIP score (the adherence axis) and the spread within each prompt; --real (a folder of `atomgen
sample --prompts` with the same prompts) adds precision and recall per prompt, and with them the front
at matched fidelity.
"""


def add_commands(commands: Any, formatter_class: type[argparse.HelpFormatter]) -> None:
    """Add ``sample`` and ``compare`` to the ``atomgen`` subcommands ``commands`` (``add_subparsers``)."""
    parser = commands.add_parser(
        "sample",
        help="sample N images from any diffusers pipeline, with sampling-time methods (resumable, sharded)",
        description="Sample N images from a diffusers pipeline (a folder, an atomgen run or a hub id) into\n"
        "--out: images/<index>.png, manifest.json (the pipeline, the settings, each image's file, class\n"
        "label or prompt, and batch) and, with --npz, samples.npz. Sharded over the processes of\n"
        "`accelerate launch`, bit for bit the single-process files; a rerun resumes.",
        epilog=SAMPLE_EPILOG,
        formatter_class=formatter_class,
    )
    add_sample_arguments(parser)
    parser.set_defaults(handler=_sample, command_parser=parser)

    compare = commands.add_parser(
        "compare",
        help="which method, at which strength, is best on your class or prompt pipeline (the CFG front)",
        description="Sample a class-conditional or prompt-conditioned pipeline over a grid of guidance scales\n"
        "w and each method's strengths at the benchmark scale w*, paired across settings (the same noise\n"
        "for each seed); score per class against --real, or per prompt (CLIP score, the spread within a\n"
        "prompt, and against --real reference images if given); pick each method's strength; write\n"
        "report.md, report.json (every score's per-seed values) and report.png (the front) to --out.\n"
        "Resumable; distributed as sample.",
        epilog=COMPARE_EPILOG,
        formatter_class=formatter_class,
    )
    add_compare_arguments(compare)
    compare.set_defaults(handler=_compare, command_parser=compare)


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``atomgen compare``."""
    from atomgen.eval.hub_features import CLIP_ID

    from .compare_config import DATASETS, EXTRACTORS

    parser.add_argument(
        "pipeline", help="a class-conditional or prompt pipeline: a folder, an atomgen run, a hub id"
    )
    parser.add_argument(
        "--real",
        default=None,
        metavar="DATASET|NPZ|FOLDER",
        help=f"class pipelines (required): the real images, a dataset ({', '.join(DATASETS)}), a .npz with "
        "images and labels (the pipeline's class ids), or a folder of `atomgen sample` with class labels; at "
        "least 6 images of every class compared. Prompt pipelines (optional): reference images of every "
        "prompt, a folder of `atomgen sample --prompts`",
    )
    parser.add_argument(
        "--classifier",
        default=None,
        metavar="NAME|PATH|ID",
        help="class pipelines: the judge of class accuracy, digits, mnist or fashion (atomgen's own) or a "
        "transformers image classifier, a folder or hub id (e.g. google/vit-base-patch16-224 for an ImageNet "
        "DiT) whose output index is the class label (default: the dataset's own; required with other --real)",
    )
    parser.add_argument(
        "--real-limit",
        type=int,
        default=None,
        metavar="N",
        help="class pipelines: use the first N real images (of a dataset, the fixed subset that training's "
        "data.limit takes); default: all",
    )
    parser.add_argument(
        "--class-labels",
        type=_labels,
        default=None,
        metavar="L1,L2,…",
        help="class pipelines: the classes to compare (default: all)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--prompts", type=Path, default=None, metavar="FILE", help="prompt pipelines: one prompt a line"
    )
    parser.add_argument(
        "--per-prompt",
        type=int,
        default=None,
        metavar="K",
        help="prompt pipelines: images per prompt, per setting and seed (≥ 2; ≥ 6 with --real)",
    )
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="the w grid")
    parser.add_argument(
        "--method",
        dest="methods",
        action="append",
        default=[],
        metavar="NAME:STRENGTH[,K=V]",
        help="a method at one strength; repeat a name with other strengths for its sweep",
    )
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds 0 … N−1")
    parser.add_argument(
        "--samples-per-class", type=int, default=50, help="class pipelines: per setting and seed"
    )
    parser.add_argument(
        "--extractor",
        choices=EXTRACTORS,
        default=None,
        help="feature space of the scores (default: dinov2; for class pipelines with a committed classifier "
        "its features when the dinov2 weights are not at hand)",
    )
    parser.add_argument("--extractor-weights", default=None, help="a folder or hub id for dinov2 or clip")
    parser.add_argument(
        "--clip-weights",
        default=None,
        help=f"prompt pipelines: the CLIP model of the CLIP score, a folder or hub id (default: {CLIP_ID})",
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    add_call_option_argument(parser)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and activations")
    parser.add_argument("--device", default=None, help="default: each process's GPU, else the CPU")
    parser.add_argument("--trust-remote-code", action="store_true", help="run code that came with the model")
    parser.add_argument("--allow-pickle", action="store_true", help="load pickled weights")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``atomgen sample`` (``compare`` shares them)."""
    parser.add_argument("pipeline", help="a diffusers pipeline folder, an atomgen run directory, or a hub id")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or to resume)")
    parser.add_argument("--num-samples", type=int, default=None, help="images to sample")
    parser.add_argument(
        "--class-labels",
        type=_labels,
        default=None,
        metavar="L1,L2,…",
        help="class-conditional pipelines: the classes to spread the images over (default: all, balanced)",
    )
    parser.add_argument(
        "--prompts", type=Path, default=None, metavar="FILE", help="text pipelines: one prompt a line"
    )
    parser.add_argument(
        "--per-prompt", type=int, default=None, metavar="K", help="images per prompt (or give --num-samples)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance w (default: the pipeline's)",
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="CLASS",
        help="a compatible diffusers scheduler, e.g. DDIMScheduler",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and activations")
    parser.add_argument(
        "--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: each process's GPU, else the CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per pipeline call")
    parser.add_argument("--seed", type=int, default=0, help="with each batch's index, keys its noise")
    parser.add_argument(
        "--method",
        dest="methods",
        action="append",
        default=[],
        metavar="NAME[:SCALE][,K=V]",
        help="a sampling-time method (atom, atom-feature, pg, cads, interval, apg, autoguidance); repeat "
        "to combine, e.g. --method atom:0.02 --method interval:0.2",
    )
    add_call_option_argument(parser)
    parser.add_argument("--npz", action="store_true", help="also write samples.npz (uint8 images, labels)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code that came with the model (off: refused)"
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="load pickled weights (.bin, .ckpt) where no safetensors"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> SampleConfig:
    """The :class:`SampleConfig` the parsed options describe (reads the prompts file)."""
    return SampleConfig(
        pipeline=args.pipeline,
        out=args.out,
        num_samples=args.num_samples,
        class_labels=args.class_labels,
        prompts=None if args.prompts is None else read_prompts(args.prompts),
        per_prompt=args.per_prompt,
        guidance_scale=args.guidance_scale,
        steps=args.steps,
        scheduler=args.scheduler,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        methods=tuple(args.methods),
        call_options=dict(args.call_options),
        npz=args.npz,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        progress=not args.no_progress,
    )


def add_call_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--call-option",
        dest="call_options",
        action="append",
        type=_call_option,
        default=[],
        metavar="KEY=VALUE",
        help="another keyword argument of every pipeline call, e.g. eta=1 (a JSON value, else a string)",
    )


def _call_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. eta=1; got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def read_prompts(path: Path) -> tuple[str, ...]:
    """The non-empty lines of ``path``, stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path} does not exist")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _labels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, e.g. 0,3,7; got {text!r}"
        ) from None


def _sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        sample(config_from_args(args))
    except (ValueError, FileNotFoundError, OSError) as error:
        parser.error(str(error))
    return 0


def _compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .compare import CompareConfig, compare

    try:
        config = CompareConfig(
            args.pipeline, args.real, args.out, scales=tuple(args.scales), methods=tuple(args.methods),
            seeds=args.seeds, samples_per_class=args.samples_per_class, steps=args.steps,
            batch_size=args.batch_size, dtype=args.dtype, device=args.device,
            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
            progress=not args.no_progress, extractor=args.extractor, extractor_weights=args.extractor_weights,
            call_options=dict(args.call_options),
            prompts=None if args.prompts is None else read_prompts(args.prompts), per_prompt=args.per_prompt,
            clip_weights=args.clip_weights, classifier=args.classifier, real_limit=args.real_limit,
            classes=args.class_labels,
        )  # fmt: skip
        compare(config)
    except (ValueError, FileNotFoundError, OSError) as error:
        parser.error(str(error))
    return 0


__all__ = [
    "SAMPLE_EPILOG",
    "add_commands",
    "add_compare_arguments",
    "add_sample_arguments",
    "config_from_args",
    "read_prompts",
]
