"""``atomgen sample``: N images from any diffusers pipeline, deterministic, sharded over processes, resumable.

Every image is a function of the seed, its batch's index and the settings (:mod:`.calls`), and the
batches are laid out the same way whatever the number of processes (:mod:`.plan`). So under
``accelerate launch --num_processes P -m atomgen sample …`` each process samples every P-th batch of
the layout (:mod:`.processes`), and the union of the processes' files is bit for bit what one process
writes. Each image is written atomically (``atomgen.io``) as ``images/<index>.png``; a batch whose
files all exist is finished, and a rerun skips it. ``manifest.json`` (:mod:`.manifest`) is written before the first batch
(``complete`` false) and again when every batch is done.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from atomgen.io import write_atomic

from .calls import PipelineCall
from .loading import DTYPES, load
from .manifest import (
    IMAGES,
    MANIFEST,
    build_manifest,
    check_out,
    describe_pipeline,
    image_file,
    write_manifest,
)
from .plan import Batch, plan_batches, shard
from .processes import Processes, wait_until

logger = logging.getLogger(__name__)

NPZ = "samples.npz"


@dataclass(frozen=True)
class SampleConfig:
    """What to sample, and how; the options of ``atomgen sample``.

    Args:
        pipeline: a folder saved by diffusers, an atomgen run directory, or a hub id.
        out: the output folder: new, empty, or this run's own (to resume).
        num_samples: the number of images (with ``prompts`` and ``per_prompt``, implied).
        class_labels: the classes to spread the images over evenly; ``None``: every class.
        prompts: the prompts of a text-conditioned pipeline.
        per_prompt: images per prompt; ``None`` spreads ``num_samples`` over the prompts.
        guidance_scale: the pipeline's ``guidance_scale``; ``None``: its default.
        steps: ``num_inference_steps``; ``None``: the pipeline's default.
        scheduler: a diffusers scheduler class compatible with the pipeline's, e.g. ``"DDIMScheduler"``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        device: ``None``: the process's accelerator (``cuda:<local rank>``), else the CPU.
        batch_size: the most images in one pipeline call.
        seed: the run's seed; with the batch index it keys every batch's noise.
        methods: sampling-time methods by name, ``NAME[:SCALE][,KEY=VALUE…]`` (the method registry).
        call_options: more keyword arguments of every pipeline call, e.g. ``{"eta": 1.0}`` for DDIM's
            ancestral sampling.
        npz: also write ``samples.npz`` (``images``: uint8 ``(N, H, W, C)``; ``labels`` or ``prompts``).
        trust_remote_code: run code that came with the model.
        allow_pickle: load pickled weights where no safetensors exist.
        progress: a progress bar on the main process.
    """

    pipeline: str
    out: Path
    num_samples: int | None = None
    class_labels: tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    per_prompt: int | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    scheduler: str | None = None
    dtype: str = "fp32"
    device: str | None = None
    batch_size: int = 16
    seed: int = 0
    methods: tuple[str, ...] = ()
    call_options: dict[str, Any] = field(default_factory=dict)
    npz: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name in ("num_samples", "per_prompt", "steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def settings(self, call: PipelineCall, num_samples: int) -> dict[str, Any]:
        """The manifest's ``settings``: the options that decide the images, defaults resolved."""
        extra = {"call_options": dict(self.call_options)} if self.call_options else {}
        return extra | {
            "methods": list(self.methods),
            "guidance_scale": call.options.get("guidance_scale"),
            "steps": call.options.get("num_inference_steps"),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "scheduler": self.scheduler,
            "num_samples": num_samples,
        }


def sample(config: SampleConfig, *, pipe: DiffusionPipeline | None = None) -> dict[str, Any]:
    """Sample ``config.num_samples`` images into ``config.out``; return the manifest.

    Every check (the pipeline, the conditioning, the methods, the output folder) runs before anything
    is written. Run under ``accelerate launch`` it shares the batches with the other processes: the
    main one returns the completed manifest once every process's images are written, the others the
    plan (``complete`` false) once their own are.

    Args:
        config: what to sample.
        pipe: the pipeline, already loaded from ``config.pipeline`` (``compare`` samples many settings
            from one); its scheduler and methods are restored on return.
    """
    processes = Processes.from_environment()
    device = processes.device(config.device)
    source = str(Path(config.pipeline).resolve()) if Path(config.pipeline).exists() else config.pipeline
    if pipe is None:
        pipe = load(
            config.pipeline,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
        )
    elif pipe.dtype != DTYPES[config.dtype]:
        raise ValueError(f"the pipeline given is {pipe.dtype}, the config asks for dtype={config.dtype!r}")
    pipeline = describe_pipeline(source, pipe)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    scheduler = pipe.scheduler
    handles: list[Any] = []
    try:
        if config.scheduler is not None:
            pipe.scheduler = _scheduler(pipe, config.scheduler)
        call = PipelineCall.of(
            pipe, steps=config.steps, guidance_scale=config.guidance_scale, extra=config.call_options
        )
        conditionings = call.conditionings(
            config.num_samples,
            class_labels=config.class_labels,
            prompts=config.prompts,
            per_prompt=config.per_prompt,
        )
        batches = plan_batches(conditionings, config.batch_size)
        num_samples = sum(batch.size for batch in batches)
        manifest = build_manifest(pipeline, config.settings(call, num_samples), batches, call.kind)
        handles = _install(pipe, config.methods)
        if not processes.is_main:  # the main process checks the folder first, and writes the plan
            wait_until(lambda: (config.out / MANIFEST).is_file())
        resume = check_out(config.out, manifest)
        return _run(config, pipe, call, batches, manifest, resume, processes)
    finally:
        for handle in reversed(handles):
            handle.remove()
        pipe.scheduler = scheduler


def _run(
    config: SampleConfig,
    pipe: DiffusionPipeline,
    call: PipelineCall,
    batches: list[Batch],
    manifest: dict[str, Any],
    resume: bool,
    processes: Processes,
) -> dict[str, Any]:
    out = config.out
    if processes.is_main:
        write_manifest(out, manifest)
        (out / IMAGES).mkdir(exist_ok=True)
        todo = [batch for batch in batches if not _finished(out, batch)]
        logger.info(
            "%s %d of %d images (%d batches) into %s on %d process(es)",
            "resuming: sampling" if resume else "sampling",
            sum(batch.size for batch in todo),
            len(manifest["images"]),
            len(todo),
            out,
            processes.count,
        )
    # Every process takes every count-th batch of the whole layout, whatever is finished: the shares
    # are disjoint without any process knowing what another has listed.
    mine = [batch for batch in shard(batches, processes.index, processes.count) if not _finished(out, batch)]
    bar = tqdm(
        total=sum(batch.size for batch in mine),
        unit="img",
        desc="sampling",
        disable=not (config.progress and processes.is_main),
    )
    # PNG encoding and fsync run on a writer thread, overlapping the next batch's sampling.
    with ThreadPoolExecutor(max_workers=1) as writer, bar:
        pending: Future | None = None
        for batch in mine:
            images = call(pipe, batch, config.seed)
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_images, out, batch, images)
            bar.update(batch.size)
        if pending is not None:
            pending.result()
    if not processes.is_main:
        return manifest  # the plan: the main process completes the manifest once every batch is written
    _wait_for_batches(out, batches)
    for stale in (out / IMAGES).glob(".*.tmp"):  # what a killed write left behind
        stale.unlink()
    manifest = {**manifest, "complete": True}
    if config.npz:
        _write_npz(out, manifest)
    write_manifest(out, manifest)
    logger.info("wrote %d images and %s to %s", len(manifest["images"]), MANIFEST, out)
    return manifest


def _wait_for_batches(out: Path, batches: list[Batch]) -> None:
    """Return once every batch's files exist (the other processes' too)."""
    remaining = list(batches)

    def done() -> bool:
        remaining[:] = [batch for batch in remaining if not _finished(out, batch)]
        return not remaining

    wait_until(done)


def _install(pipe: DiffusionPipeline, methods: tuple[str, ...]) -> list[Any]:
    """Install the methods on ``pipe`` (the registry checks them all first and refuses, before any sampling)."""
    if not methods:
        return []
    from atomgen.pipelines.methods import install_methods, parse_method

    return list(install_methods(pipe, [parse_method(method) for method in methods]))


def _scheduler(pipe: DiffusionPipeline, name: str) -> Any:
    current = type(pipe.scheduler)
    compatible = {cls.__name__: cls for cls in [current, *getattr(pipe.scheduler, "compatibles", [])]}
    if name not in compatible:
        raise ValueError(
            f"--scheduler {name!r} is not one {type(pipe).__name__}'s {current.__name__} can be swapped for; "
            f"compatible: {', '.join(sorted(compatible))}"
        )
    return compatible[name].from_config(pipe.scheduler.config)


def _finished(out: Path, batch: Batch) -> bool:
    return all((out / image_file(index)).is_file() for index in batch.image_indices)


def _write_images(out: Path, batch: Batch, images: np.ndarray) -> None:
    """Write the batch's missing files (one that exists was written whole, with the same pixels)."""
    for index, image in zip(batch.image_indices, DiffusionPipeline.numpy_to_pil(images), strict=True):
        path = out / image_file(index)
        if not path.is_file():
            write_atomic(path, lambda file, image=image: image.save(file, format="PNG"))


def _write_npz(out: Path, manifest: dict[str, Any]) -> None:
    """``samples.npz`` from the PNG files (what an evaluator reads): ``images`` uint8 ``(N, H, W, C)``,
    and ``labels`` or ``prompts`` per image where the pipeline is conditioned."""
    arrays: dict[str, np.ndarray] = {}
    images = []
    for entry in manifest["images"]:
        with PIL.Image.open(out / entry["file"]) as image:
            array = np.asarray(image)
        images.append(array[..., None] if array.ndim == 2 else array)
    arrays["images"] = np.stack(images)
    if manifest["images"][0]["class_label"] is not None:
        arrays["labels"] = np.array([entry["class_label"] for entry in manifest["images"]], dtype=np.int64)
    if manifest["images"][0]["prompt"] is not None:
        arrays["prompts"] = np.array([entry["prompt"] for entry in manifest["images"]], dtype=str)
    write_atomic(out / NPZ, lambda file: np.savez(file, **arrays))


__all__ = ["NPZ", "SampleConfig", "sample"]
