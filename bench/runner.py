"""The command line and the report writing that the staged benchmarks (attribution, vae) share.

bench/ is a folder of scripts, not a package; a script imports this module after putting its own folder
on ``sys.path``, as for :mod:`training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parse_arguments(
    doc: str,
    datasets: tuple[str, ...],
    results: str,
    argv: list[str] | None,
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--out``, ``--preset``, ``--dry-run``, ``--seeds``, ``--datasets``, ``--set`` and ``--results``
    (whose help says which files: ``results``), and whatever ``more(parser)`` adds; the docstring's first
    paragraph is the description, the rest the epilog. Also sets up logging to stderr."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumable)")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu"), help="sizes (default: cpu)")
    parser.add_argument(
        "--dry-run", action="store_true", help="the dry-run preset: every code path at toy sizes"
    )
    parser.add_argument("--seeds", type=int, help="model seeds (default: the preset's)")
    parser.add_argument(
        "--datasets", nargs="+", default=list(datasets), choices=datasets, help="default: all"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every model, after the preset's (a variant: give it its own --out), "
        "e.g. 'separation.options={commitment_weight: 1.0}'",
    )
    parser.add_argument("--results", type=Path, help=f"also write {results} here (results/)")
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    return args


def chosen_preset(args: argparse.Namespace, presets: Any) -> Any:
    """The preset the arguments ask for, from ``presets.named``: ``--dry-run`` or ``--preset``, then
    ``--seeds`` and the ``--set`` overrides added to every dataset's (they land in the report's preset)."""
    preset = presets.named("dry-run" if args.dry_run else args.preset)
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=args.seeds)
    if args.set:
        overrides = tuple((dataset, (*own, *args.set)) for dataset, own in preset.overrides)
        preset = dataclasses.replace(preset, overrides=overrides)
    return preset


def write_reports(
    report: dict[str, Any],
    stem: str,
    folders: tuple[Path | None, ...],
    markdown: Callable[[dict[str, Any]], str],
    figure: Callable[[Path], None],
) -> None:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (drawn by ``figure(path)``) into every folder
    given, atomically (:func:`atomgen.benchmark.report.write_reports`); the markdown to stdout."""
    from atomgen.benchmark.report import write_reports as write

    print(write(report, stem, folders, markdown, figure))
