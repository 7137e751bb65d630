"""What the benchmarks share about their models and data: a preset's config overrides per dataset, a model
trained once (resumed, never mixed with a run of another config), and the held-out images of a training
subset.

bench/ is a folder of scripts, not a package; a script imports this module after putting its own folder
on ``sys.path`` (``python bench/x.py`` does that already; the tests load the scripts by path).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench.training")

HELD_OUT_SEED = 0  # the order in which held-out images are taken: the same for every model seed
LOCK_POLL_SECONDS = 60.0  # how often a benchmark looks again at a model or setting another process has


def dataset_overrides(overrides: tuple[tuple[str, tuple[str, ...]], ...], dataset: str) -> tuple[str, ...]:
    """A preset's config overrides for ``dataset``, from its ``(dataset, overrides)`` pairs.

    Raises:
        SystemExit: the preset has no sizes for that dataset.
    """
    known = dict(overrides)
    if dataset not in known:
        raise SystemExit(f"the preset has no sizes for dataset {dataset!r}; known: {sorted(known)}")
    return known[dataset]


def train_once(config: Any, export: str, *, progress: bool = True) -> Path:
    """The exported model ``<train.output_dir>/<export>`` of ``config`` (an ``ExperimentConfig``),
    trained first when it is missing, and resumed from the latest checkpoint when one exists. When
    another process is training it (``atomgen.train.run_lock``), waits for that model instead.

    The seconds this invocation trained go to ``train.json`` beside the run directory.

    Args:
        config: the experiment; ``train.output_dir`` is the run directory.
        export: what :func:`atomgen.train.train` writes last: ``"pipeline"`` or ``"vae"``.
        progress: the training progress bar.

    Raises:
        SystemExit: the run directory holds a run of another config (another preset, say): continuing it
            would mix two experiments.
    """
    from atomgen.io import write_json
    from atomgen.train import ExperimentConfig, RunLocked, train

    run = Path(config.train.output_dir)
    if (run / "config.yaml").is_file():
        saved = ExperimentConfig.from_yaml(run / "config.yaml")
        saved.train.output_dir = config.train.output_dir  # the same folder, however it was spelled
        if saved.to_dict() != config.to_dict():
            raise SystemExit(
                f"{run} holds a model trained with another config (another preset?); use another --out"
            )
    folder = run / export
    while not (folder / ("model_index.json" if export == "pipeline" else "config.json")).is_file():
        resume = "latest" if (run / "checkpoints").is_dir() else None
        logger.info("training %s%s", run, " (resuming)" if resume else "")
        started = time.perf_counter()
        try:
            train(config, resume=resume, progress=progress)
        except RunLocked as busy:  # another process (a training queue) trains it: use its model
            logger.info("%s; waiting for it", busy)
            time.sleep(LOCK_POLL_SECONDS)
            continue
        seconds = time.perf_counter() - started  # of this invocation only, when it resumed
        write_json(run.parent / "train.json", {"seconds": seconds, "resumed": bool(resume)})
    return folder


def held_out_data(data: Any, count: int) -> Any:
    """``count`` images of the dataset ``data`` (a ``DataConfig``) that the models never saw, with their
    labels, the same for every model seed: :meth:`DataConfig.held_out`."""
    held = data.held_out(count, seed=HELD_OUT_SEED)
    logger.info("%s: %d images held out from the %d-image training subset", data.name, count, data.limit)
    return held


def held_out(data: Any, count: int) -> torch.Tensor:
    """The images of :func:`held_out_data`, ``(count, C, H, W)`` in [-1, 1]."""
    return held_out_data(data, count).images


def held_out_source(data: Any, count: int) -> Any:
    """The images of :func:`held_out_data` as the real side of :func:`atomgen.eval.run_eval`: a
    ``TensorSource`` named after the dataset (so run_eval takes its classifier's features and its ten
    modes), with the labels."""
    from atomgen.eval import TensorSource

    held = held_out_data(data, count)
    return TensorSource(held.images, value_range=(-1, 1), name=data.name, labels=held.labels)


def scored(real: Any, fake: Any, flatten: Any, **options: Any) -> dict[str, Any]:
    """:func:`atomgen.eval.run_eval` of ``fake`` against ``real`` on the metrics the benchmarks compare
    (``fid``, ``prdc``, ``vendi``, ``mode_coverage``), without a progress bar; ``options`` go to run_eval.

    Returns:
        ``scores`` (``flatten(report)``, e.g. :func:`sample_scores`) and the ``extractor``'s name.
    """
    from atomgen.eval import run_eval

    report = run_eval(real, fake, ["fid", "prdc", "vendi", "mode_coverage"], progress=False, **options)
    return {"scores": flatten(report), "extractor": report["extractor"]}


def sample_scores(report: dict[str, Any]) -> dict[str, float]:
    """The generated side's numbers of one :func:`atomgen.eval.run_eval` report (metrics ``fid``,
    ``prdc``, ``vendi``, ``mode_coverage``) that the benchmarks compare."""
    metrics = report["metrics"]
    prdc = metrics["prdc"]
    return {
        **{key: prdc[key] for key in ("recall", "coverage", "precision", "density")},
        "fid": metrics["fid"],
        "vendi": metrics["vendi"]["fake"],
        "modes_covered": metrics["mode_coverage"]["modes_covered"],
    }
