"""The ``atomgen`` command line: parses, validates and dispatches; the work lives in importable functions."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__

DEMO_EPILOG = """\
examples:
  atomgen demo                                   # about 10 minutes on 2 CPU cores
  atomgen demo --quick --out runs/smoke          # about 3 minutes
  atomgen demo --no-cfg --no-vae                 # without the classifier-free-guidance and VAE sections
  atomgen demo --seeds 3 --mode repulsive        # mean ± std over 3 seeds, the repulsive atom loss
  atomgen demo --inception --num-samples 1000    # FID Inception-v3 features (slow on a CPU)
  atomgen demo --set separation.weight=0.5 --set model.block_out_channels=[32,64]
"""


TRAIN_EPILOG = """\
examples:
  atomgen train configs/digits-ddpm.yaml --set separation.method=atom
  atomgen train configs/digits-vae.yaml --set train.steps=200 --dry-run
  atomgen train configs/digits-ddpm.yaml --resume latest
  accelerate launch --num_processes 2 -m atomgen train configs/mnist5k-ddpm.yaml
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; description and examples kept as written."""


def build_parser(*, quick: bool = False) -> argparse.ArgumentParser:
    """The ``atomgen`` argument parser, one subparser per command (``quick``: ``demo --quick``'s defaults)."""
    from .demo import LIBRARY_MODE, DemoConfig
    from .separation import MODES

    parser = argparse.ArgumentParser(
        prog="atomgen",
        description="Atom separation for diffusers: more diverse generators, measured honestly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    small = DemoConfig.quick()
    defaults = small if quick else DemoConfig()
    demo = commands.add_parser(
        "demo",
        help="train, sample and score baseline, atom, dispersive and two guidance methods on the digits",
        description="Train a small DDPM on scikit-learn's 8×8 digits three times with the same seed (plain,\n"
        "atom separation, Dispersive Loss), sample each, and sample the plain one with atom guidance and\n"
        "Particle Guidance; score all five with atomgen.eval and write report.md, report.json, sample\n"
        "grids, the atom model's attribution maps beside the best saliency baseline's, deletion and\n"
        "insertion curves and a diversity-fidelity plot to --out. Two last sections train a\n"
        "class-conditional model and compare plain classifier-free guidance over a grid of w with atom and\n"
        "feature guidance (--no-cfg skips it), and train a plain VAE and one with atom separation at the\n"
        "encoder, measured on held-out images (--no-vae skips it).",
        epilog=DEMO_EPILOG,
        formatter_class=_HelpFormatter,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    demo.add_argument(
        "--out", type=Path, default=Path("runs") / f"demo-{stamp}", help="run directory (new or empty)"
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test sizes, about 3 minutes (steps={small.steps}, samples={small.num_samples}, "
        f"inference steps={small.num_inference_steps}); explicit options still win",
    )
    demo.add_argument("--seeds", type=int, default=defaults.seeds, help="repeat with N seeds: mean ± std")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="the first seed")
    demo.add_argument("--steps", type=int, default=defaults.steps, help="training steps per model")
    demo.add_argument(
        "--num-samples", type=int, default=defaults.num_samples, help="images sampled per method and seed"
    )
    demo.add_argument(
        "--num-inference-steps", type=int, default=defaults.num_inference_steps, help="DDIM sampling steps"
    )
    demo.add_argument(
        "--mode",
        choices=MODES,
        default=argparse.SUPPRESS,
        help=f"pair weights of the atom loss (method.md §4) (default: the library's, {LIBRARY_MODE!r})",
    )
    demo.add_argument(
        "--atom-guidance", type=float, default=defaults.atom_guidance, help="γ of atom guidance"
    )
    demo.add_argument(
        "--particle-guidance", type=float, default=defaults.particle_guidance, help="γ of Particle Guidance"
    )
    demo.add_argument(
        "--inception", action="store_true", help="FID Inception-v3 features instead of the digit classifier's"
    )
    demo.add_argument("--config", type=Path, default=Path(defaults.config), help="base training config")
    demo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the base config for every training (separation.options.*: "
        "AtomSeparation arguments, for the atom model only)",
    )
    demo.add_argument(
        "--no-cfg",
        dest="cfg",
        action="store_false",
        default=argparse.SUPPRESS,
        help="skip the classifier-free-guidance section (run by default)",
    )
    demo.add_argument(
        "--cfg-steps", type=int, default=defaults.cfg_steps, help="training steps of the CFG section's model"
    )
    demo.add_argument(
        "--cfg-samples-per-class",
        type=int,
        default=defaults.cfg_samples_per_class,
        help="CFG section: images per class and setting",
    )
    demo.add_argument(
        "--cfg-inference-steps",
        type=int,
        default=defaults.cfg_inference_steps,
        help="CFG section: DDIM sampling steps",
    )
    demo.add_argument(
        "--no-vae",
        dest="vae",
        action="store_false",
        default=argparse.SUPPRESS,
        help="skip the VAE section (run by default)",
    )
    demo.add_argument(
        "--vae-steps", type=int, default=defaults.vae_steps, help="training steps of each of the two VAEs"
    )
    demo.add_argument(
        "--vae-held-out",
        type=int,
        default=defaults.vae_held_out,
        help="VAE section: images the VAEs do not train on, where they are measured",
    )
    demo.add_argument(
        "--vae-samples", type=int, default=defaults.vae_samples, help="VAE section: prior samples per VAE"
    )
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bars (training, sampling, scoring, loading pipelines)",
    )
    demo.set_defaults(handler=_demo, command_parser=demo)

    train = commands.add_parser(
        "train",
        help="train a DDPM or VAE with a separation loss (accelerate)",
        description="Train the generator a YAML config describes; see docs/training.md for the schema.",
        epilog=TRAIN_EPILOG,
        formatter_class=_HelpFormatter,
    )
    train.add_argument(
        "config",
        type=Path,
        help="YAML config, or a packaged one by name (configs/digits-ddpm.yaml, digits-ddpm)",
    )
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    train.add_argument("--dry-run", action="store_true", help="resolve the config and build, train nothing")
    train.add_argument("--resume", default=None, metavar="latest|PATH", help="continue from a checkpoint")
    train.set_defaults(handler=_train, command_parser=train)

    from atomgen.sampling.cli import add_commands

    add_commands(commands, _HelpFormatter)  # sample, compare

    from atomgen.eval.command import add_eval_arguments

    evaluate = commands.add_parser(
        "eval",
        help="diversity and fidelity metrics of generated images against real ones",
        description="FID/KID (or FD_DINOv2), precision/recall/density/coverage, Vendi, LPIPS diversity, "
        "mode coverage; per-class scores and class accuracy of class-conditional models; CLIP score and "
        "diversity within each prompt of text-to-image samples.",
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=_eval, command_parser=evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``atomgen`` console script and of ``python -m atomgen``."""
    args = build_parser().parse_args(argv)
    if getattr(args, "quick", False):  # --quick changes the defaults; options given explicitly still win
        args = build_parser(quick=True).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return args.handler(args.command_parser, args)


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo
    from .train.config import ConfigError

    settings = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if hasattr(args, f.name)
    }
    settings["config"] = str(args.config)
    try:
        config = DemoConfig(**settings)
    except ValueError as error:
        parser.error(str(error))
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out} already exists and is not an empty directory; choose a new one")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpointed object
    try:
        report = run_demo(args.out, config, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"wrote {args.out / 'report.md'} in {report['wall_seconds']:.0f} s")
    return 0


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .train import RunLocked, train
    from .train.config import ConfigError, ExperimentConfig

    try:
        config = ExperimentConfig.from_yaml(args.config, args.overrides)
        run = train(config, resume=args.resume, dry_run=args.dry_run)
    except (ConfigError, FileNotFoundError) as error:
        parser.error(str(error))
    except RunLocked as error:  # not a usage error: the run is busy
        print(f"atomgen train: {error}", file=sys.stderr)
        return 1
    print(f"{'checked' if args.dry_run else 'trained'}: {run}")
    return 0


def _eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from atomgen.eval.command import eval_command

    try:
        eval_command(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
