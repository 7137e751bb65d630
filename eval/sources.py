"""Where images come from: tensors, folders of image files, ``.npz`` arrays, dataset names, run directories.

Every source yields float32 batches ``(B, C, H, W)`` with values in ``[0, 1]`` (the one convention of
``atomgen.eval``), knows its length, and has a content *fingerprint* that keys the feature cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomgen.data import image_files, load_dataset, read_image

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist5k", "fashion-mnist")

__all__ = [
    "DATASETS",
    "FolderSource",
    "ImageSource",
    "TensorSource",
    "draw_samples",
    "open_source",
    "vae_directory",
]


class ImageSource:
    """A finite collection of images read in batches.

    Attributes:
        name: a short description for reports (a path, a dataset name).
        labels: integer class labels ``(N,)`` when the source has them, else ``None``.
    """

    name: str
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Float32 batches ``(B, C, H, W)`` in ``[0, 1]``, in a fixed order."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 (hex) of the images' content, independent of batch size."""
        raise NotImplementedError


class TensorSource(ImageSource):
    """Images held in memory.

    Args:
        images: ``(N, C, H, W)`` or ``(N, H, W, C)`` (``channels_last=True``); uint8 in ``[0, 255]`` or
            float in ``value_range``.
        value_range: range of float inputs: ``(0, 1)`` or ``(-1, 1)`` (atomgen's datasets).
        name: description for reports.
        labels: optional class labels ``(N,)``.
        channels_last: the array is ``(N, H, W, C)`` (PIL/diffusers ``output_type="np"`` layout).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str = "tensor",
        labels: torch.Tensor | np.ndarray | None = None,
        channels_last: bool = False,
    ):
        images = torch.as_tensor(images)
        if channels_last:
            images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images
        if images.ndim == 3:  # (N, H, W): grey images
            images = images[:, None]
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) or (N, H, W); got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)}); "
                "pass channels_last=True for (N, H, W, C) arrays"
            )
        if images.dtype == torch.uint8:
            images = images.to(torch.float32) / 255.0
        elif images.is_floating_point():
            low, high = value_range
            if high <= low:
                raise ValueError(f"value_range must be increasing, got {value_range}")
            images = ((images.to(torch.float32) - low) / (high - low)).clamp(0.0, 1.0)
        else:
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        self.images = images.contiguous()
        self.name = name
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
        digest.update(self.images.numpy().tobytes())
        return digest.hexdigest()


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], mode: str):
        self.paths, self.mode = paths, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            array = read_image(path, self.mode)
        except (OSError, ValueError) as error:
            raise OSError(f"cannot read image file {path}: {error}") from error
        tensor = torch.from_numpy(array)
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return tensor, index


class FolderSource(ImageSource):
    """Image files under a folder (recursively), in sorted path order.

    All images must share one size (generated samples do); grey folders stay one channel, any colour
    image makes the whole folder RGB.

    Args:
        root: the folder.
        limit: use only the first ``limit`` files.
    """

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        paths = image_files(self.root)
        self.paths = paths[:limit] if limit is not None else paths
        self.name = str(self.root)
        self.mode = self._colour_mode()

    def _colour_mode(self) -> str:
        from PIL import Image

        for path in self.paths[:64]:  # a sample decides; a grey image in an RGB folder is converted
            try:
                with Image.open(path) as image:
                    if image.mode not in ("L", "1", "I", "I;16", "F"):
                        return "RGB"
            except OSError as error:
                raise OSError(f"cannot read image file {path}: {error}") from error
        return "L"

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.paths, self.mode),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=self._collate,
        )
        for batch in loader:
            yield batch.to(torch.float32) / 255.0

    def _collate(self, items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        shape = items[0][0].shape
        for tensor, index in items:
            if tensor.shape != shape:
                raise ValueError(
                    f"images in {self.root} differ in size: {self.paths[items[0][1]]} is "
                    f"{tuple(shape[1:])}, {self.paths[index]} is {tuple(tensor.shape[1:])}; resize them "
                    "to one size first"
                )
        return torch.stack([tensor for tensor, _ in items])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.mode.encode())
        for path in self.paths:
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


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


def draw_samples(
    pipeline, num_samples: int, batch_size: int, generator: torch.Generator | None, **options
) -> np.ndarray:
    """``num_samples`` images ``(N, H, W, C)`` in ``[0, 1]`` from ``pipeline(batch_size=…, output_type="np")``,
    drawn in batches of at most ``batch_size`` from one ``generator`` (so the same seed gives the same
    images); ``options`` go to every call."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    chunks, remaining = [], num_samples
    while remaining > 0:
        batch = min(batch_size, remaining)
        out = pipeline(batch_size=batch, generator=generator, output_type="np", **options)
        chunks.append(np.asarray(out.images, dtype=np.float32))
        remaining -= batch
    return np.concatenate(chunks)


def _sample_run(root: Path, sampling: RunSampling, device: torch.device | str) -> TensorSource:
    vae = vae_directory(root)
    if vae is not None:  # an AutoencoderKL: decoded prior samples (a VAE has no denoising steps)
        from atomgen.pipelines import AtomVAEPipeline

        pipeline, extra, kind = AtomVAEPipeline.from_pretrained(vae), {}, "prior samples"
    else:
        model_index = json.loads((root / "model_index.json").read_text())
        pipeline, kind = _pipeline_class(model_index).from_pretrained(root), "pipeline samples"
        extra = {}
        if sampling.num_inference_steps is not None:
            extra["num_inference_steps"] = sampling.num_inference_steps
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
    images = draw_samples(pipeline, sampling.num_samples, sampling.batch_size, generator, **extra)
    logger.info("drew %d %s from %s", len(images), kind, root)
    return TensorSource(images, channels_last=True, name=f"{root} ({kind})")


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
) -> ImageSource:
    """Resolve what the user named into an :class:`ImageSource`.

    Args:
        spec: an :class:`ImageSource`; an image tensor or array (``(N, C, H, W)``, uint8 or in [0, 1]);
            a dataset name (``"digits"``, ``"mnist5k"``); a ``.npz`` file with an ``images`` array
            (uint8, or floats in [0, 1] or [-1, 1]; optional ``labels``); a folder of image files; or a
            run directory (its ``samples.npz``, its ``samples/`` folder, samples drawn from its
            saved pipeline, or a VAE's decoded prior samples, see :func:`vae_directory`).
        sampling: how to draw samples from a run directory's pipeline.
        device: device for drawing pipeline samples.
    """
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, torch.Tensor | np.ndarray):
        return TensorSource(spec)
    text = str(spec)
    if text in DATASETS:
        return _load_dataset(text)
    path = Path(text)
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
    return FolderSource(path)


def _is_run(path: Path) -> bool:
    """A run directory: saved samples, a saved pipeline or a saved VAE (its PNG grids are not samples)."""
    if (path / "samples.npz").is_file() or (path / "samples").is_dir():
        return True
    if vae_directory(path) is not None:
        return True
    return any((folder / "model_index.json").is_file() for folder in (path, *path.iterdir()))
