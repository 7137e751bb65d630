"""What the benchmarks share about their models and data: a preset's config overrides per dataset, a model
trained once (resumed, never mixed with a run of another config), and the held-out images of a training
subset.

bench/ is a folder of scripts, not a package; a script imports this module after putting its own folder
on ``sys.path`` (``python bench/x.py`` does that already; the tests load the scripts by path).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench.training")

HELD_OUT_SEED = 0  # the order in which held-out images are taken: the same for every model seed


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
    trained first when it is missing, and resumed from the latest checkpoint when one exists.

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
    from atomgen.train import ExperimentConfig, train

    run = Path(config.train.output_dir)
    if (run / "config.yaml").is_file():
        saved = ExperimentConfig.from_yaml(run / "config.yaml")
        saved.train.output_dir = config.train.output_dir  # the same folder, however it was spelled
        if saved.to_dict() != config.to_dict():
            raise SystemExit(
                f"{run} holds a model trained with another config (another preset?); use another --out"
            )
    folder = run / export
    if not (folder / ("model_index.json" if export == "pipeline" else "config.json")).is_file():
        resume = "latest" if (run / "checkpoints").is_dir() else None
        logger.info("training %s%s", run, " (resuming)" if resume else "")
        started = time.perf_counter()
        train(config, resume=resume, progress=progress)
        seconds = time.perf_counter() - started  # of this invocation only, when it resumed
        write_json(run.parent / "train.json", {"seconds": seconds, "resumed": bool(resume)})
    return folder


def held_out_data(data: Any, count: int) -> Any:
    """``count`` images of the dataset ``data`` (a ``DataConfig``) that the models never saw, with their
    labels: an ``ImageData`` of images of the whole dataset, prepared the same way (in [-1, 1]), whose
    pixels match no image of the training subset ``data.limit``; taken in a fixed random order."""
    if data.limit is None:
        raise ValueError(
            f"the models train on the whole of {data.name!r} (data.limit is null): no image is held out"
        )
    training = data.load().images
    everything = dataclasses.replace(data, limit=None).load()
    seen = {image.numpy().tobytes() for image in training}
    unseen = [i for i, image in enumerate(everything.images) if image.numpy().tobytes() not in seen]
    logger.info("%s: %d training images, %d held out", data.name, len(training), len(unseen))
    if len(unseen) < count:
        raise ValueError(
            f"{data.name!r} has {len(unseen)} images outside the {len(training)} training images, fewer "
            f"than the {count} to measure; lower data.limit or the number of images to measure"
        )
    order = torch.randperm(len(unseen), generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    keep = torch.tensor(unseen)[order[:count]]
    return dataclasses.replace(everything, images=everything.images[keep], labels=everything.labels[keep])


def held_out(data: Any, count: int) -> torch.Tensor:
    """The images of :func:`held_out_data`, ``(count, C, H, W)`` in [-1, 1]."""
    return held_out_data(data, count).images
