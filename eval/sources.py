"""Where images come from: tensors, folders of image files, ``.npz`` arrays, dataset names, run directories.

Every source (:class:`~atomgen.eval.image_source.ImageSource`) yields float32 batches ``(B, C, H, W)``
with values in ``[0, 1]`` (the one convention of ``atomgen.eval``), knows its length, and has a content
*fingerprint* that keys the feature cache. Image files are read by :mod:`.folders`.

A class-conditional pipeline (``AtomClassConditionalPipeline``, what ``atomgen train`` saves for a config
with ``model.num_classes``) is sampled with balanced classes: the same number of images of every class,
each image labelled with the class it was asked for.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomgen.data import load_dataset

from .folders import MANIFEST, FolderSource, ManifestSource
from .image_source import ImageSource, TensorSource

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist5k", "fashion-mnist")

__all__ = [
    "DATASETS",
    "FolderSource",
    "ImageSource",
    "ManifestSource",
    "RunSampling",
    "TensorSource",
    "balanced_labels",
    "draw_samples",
    "open_source",
    "vae_directory",
]


# --- datasets that ship inside installed packages --------------------------------------------------------


def _load_dataset(name: str) -> TensorSource:
    """A training dataset by name, through the same loaders training uses (atomgen.data)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    data = load_dataset(name)
    return TensorSource(data.images, value_range=(-1.0, 1.0), name=data.name, labels=data.labels)


# --- run directories: samples saved by a run, or drawn from its saved pipeline ---------------------------


@dataclass(frozen=True)
class RunSampling:
    """How to draw samples from a run directory's pipeline when it has no saved samples."""

    num_samples: int = 256
    batch_size: int = 64
    num_inference_steps: int | None = None
    seed: int = 0
    guidance_scale: float | None = None  # class-conditional pipelines: CFG scale (None: the pipeline's)


def _pipeline_class(model_index: dict):
    name = model_index.get("_class_name", "")
    import diffusers

    import atomgen.pipelines as own  # atomgen's own pipelines first, then diffusers'

    if hasattr(own, name):
        return getattr(own, name)

    if hasattr(diffusers, name):
        return getattr(diffusers, name)
    raise ValueError(
        f"model_index.json names pipeline class {name!r}, found in neither atomgen nor diffusers"
    )


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class labels for ``num_samples`` images, the same count of every class, in class order: at least
    ``num_samples`` (rounded up to a multiple of ``num_classes``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    per_class = max(1, math.ceil(num_samples / num_classes))
    return np.repeat(np.arange(num_classes), per_class)


def draw_samples(
    pipeline,
    num_samples: int,
    batch_size: int,
    generator: torch.Generator | None,
    *,
    class_labels: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """``num_samples`` images ``(N, H, W, C)`` in ``[0, 1]`` from ``pipeline(…, output_type="np")``, drawn
    in batches of at most ``batch_size`` from one ``generator`` (so the same seed gives the same images).

    Args:
        pipeline: called with ``batch_size=`` (unconditional) or ``class_labels=`` (one label per image,
            when ``class_labels`` is given: then ``num_samples`` is ``len(class_labels)``).
        class_labels: ``(N,)`` the class of each image, for class-conditional pipelines.
        options: keyword arguments for every call.
    """
    if class_labels is not None:
        num_samples = len(class_labels)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    chunks = []
    for start in range(0, num_samples, batch_size):
        batch = min(batch_size, num_samples - start)
        if class_labels is None:
            out = pipeline(batch_size=batch, generator=generator, output_type="np", **options)
        else:
            labels = torch.as_tensor(class_labels[start : start + batch])
            out = pipeline(class_labels=labels, generator=generator, output_type="np", **options)
        chunks.append(np.asarray(out.images, dtype=np.float32))
    return np.concatenate(chunks)


def _sample_run(root: Path, sampling: RunSampling, device: torch.device | str) -> TensorSource:
    vae = vae_directory(root)
    labels = None
    if vae is not None:  # an AutoencoderKL: decoded prior samples (a VAE has no denoising steps)
        from atomgen.pipelines import AtomVAEPipeline

        pipeline, extra, kind = AtomVAEPipeline.from_pretrained(vae), {}, "prior samples"
    else:
        model_index = json.loads((root / "model_index.json").read_text())
        pipeline, kind = _pipeline_class(model_index).from_pretrained(root), "pipeline samples"
        extra = {}
        if sampling.num_inference_steps is not None:
            extra["num_inference_steps"] = sampling.num_inference_steps
        num_classes = getattr(pipeline, "num_classes", None)
        if isinstance(num_classes, int):  # class-conditional: balanced classes, labelled
            labels = balanced_labels(sampling.num_samples, num_classes)
            if len(labels) != sampling.num_samples:
                logger.info(
                    "drawing %d samples (%d per class) rather than %d, so that all %d classes have as many",
                    len(labels), len(labels) // num_classes, sampling.num_samples, num_classes,
                )  # fmt: skip
            if sampling.guidance_scale is not None:
                extra["guidance_scale"] = sampling.guidance_scale
            kind = f"pipeline samples, {len(labels) // num_classes} per class"
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
    images = draw_samples(
        pipeline, sampling.num_samples, sampling.batch_size, generator, class_labels=labels, **extra
    )
    logger.info("drew %d %s from %s", len(images), kind, root)
    return TensorSource(images, channels_last=True, name=f"{root} ({kind})", labels=labels)


def vae_directory(path: str | Path) -> Path | None:
    """Where an ``AutoencoderKL`` saved by atomgen loads from, or ``None`` when ``path`` holds none.

    Recognised: a saved ``AtomVAEPipeline`` (``model_index.json``), a bare ``AutoencoderKL`` directory
    (``config.json``), and a run directory of ``atomgen train`` with a VAE config (its ``vae/`` folder).
    The returned path is what ``AtomVAEPipeline.from_pretrained`` takes.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file():  # a pipeline; only AtomVAEPipeline is a VAE
        return path if _class_name(path / "model_index.json") == "AtomVAEPipeline" else None
    for folder in (path, path / "vae"):
        if _class_name(folder / "config.json") == "AutoencoderKL":
            return folder
    return None


def _class_name(config: Path) -> str | None:
    """``_class_name`` of a diffusers JSON config, ``None`` when the file is missing or not one."""
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return value.get("_class_name") if isinstance(value, dict) else None


def _open_run(root: Path, sampling: RunSampling, device: torch.device | str) -> ImageSource:
    if (root / "samples.npz").is_file():
        return _open_npz(root / "samples.npz")
    if (root / "samples").is_dir():
        return FolderSource(root / "samples")
    if (root / "model_index.json").is_file() or vae_directory(root) is not None:
        return _sample_run(root, sampling, device)
    pipelines = sorted(child for child in root.iterdir() if (child / "model_index.json").is_file())
    if len(pipelines) == 1:
        return _sample_run(pipelines[0], sampling, device)
    if pipelines:
        raise ValueError(
            f"{root} holds {len(pipelines)} pipelines; name one: {', '.join(str(p) for p in pipelines)}"
        )
    raise FileNotFoundError(
        f"{root} has no samples/, no samples.npz and no saved pipeline (model_index.json)"
    )


def _open_npz(path: Path) -> TensorSource:
    with np.load(path) as archive:
        keys = [key for key in ("images", "samples", "arr_0") if key in archive]
        if not keys:
            raise KeyError(f"{path} holds {sorted(archive.files)}; expected an array named 'images'")
        images = archive[keys[0]]
        labels = archive.get("labels", None)
    channels_last = images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3)
    value_range = (-1.0, 1.0) if images.dtype != np.uint8 and images.min() < 0 else (0.0, 1.0)
    return TensorSource(
        images, value_range=value_range, channels_last=channels_last, name=str(path), labels=labels
    )


def open_source(
    spec: str | Path | torch.Tensor | np.ndarray | ImageSource,
    *,
    sampling: RunSampling | None = None,
    device: torch.device | str = "cpu",
    skip_unreadable: bool = False,
) -> ImageSource:
    """Resolve what the user named into an :class:`ImageSource`.

    Args:
        spec: an :class:`ImageSource`; an image tensor or array (``(N, C, H, W)``, uint8 or in [0, 1]);
            a dataset name (``"digits"``, ``"mnist5k"``); a ``.npz`` file with an ``images`` array
            (uint8, or floats in [0, 1] or [-1, 1]; optional ``labels``); a folder of image files; or a
            run directory (its ``samples.npz``, its ``samples/`` folder, samples drawn from its
            saved pipeline, or a VAE's decoded prior samples, see :func:`vae_directory`).
            A folder holding a ``manifest.json`` of ``atomgen sample`` (or the manifest itself) gives
            the images it lists, with their prompts and class labels.
        sampling: how to draw samples from a run directory's pipeline.
        device: device for drawing pipeline samples.
        skip_unreadable: image files that cannot be decoded are left out and listed (see
            :class:`~atomgen.eval.folders.FolderSource`), instead of stopping with an error.
    """
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, torch.Tensor | np.ndarray):
        return TensorSource(spec)
    text = str(spec)
    if text in DATASETS:
        return _load_dataset(text)
    path = Path(text)
    if (path.name == MANIFEST and path.is_file()) or (path / MANIFEST).is_file():
        return ManifestSource(path, skip_unreadable=skip_unreadable)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return _open_npz(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{text!r} is neither a dataset name ({', '.join(DATASETS)}), nor an existing folder or .npz file"
        )
    if not path.is_dir():
        raise ValueError(f"{path} is a file; expected a folder, a run directory or a .npz file")
    if _is_run(path):
        return _open_run(path, sampling or RunSampling(), device)
    if (path / "config.yaml").is_file():  # what `atomgen train` writes first: a run, not an image folder
        raise FileNotFoundError(
            f"{path} is a training run directory (config.yaml) with neither a saved pipeline "
            "(pipeline/model_index.json) nor a saved VAE (vae/config.json): its training has not "
            "finished; resume it (atomgen train CONFIG --resume latest) or name another directory"
        )
    return FolderSource(path, skip_unreadable=skip_unreadable)


def _is_run(path: Path) -> bool:
    """A run directory: saved samples, a saved pipeline or a saved VAE (its PNG grids are not samples)."""
    if (path / "samples.npz").is_file() or (path / "samples").is_dir():
        return True
    if vae_directory(path) is not None:
        return True
    return any((folder / "model_index.json").is_file() for folder in (path, *path.iterdir()))
