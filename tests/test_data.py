"""Training datasets: the shipped ones, image folders with bad files, and the errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atomgen.data import FASHION_MNIST_DIR, load_dataset


def _folder(root: Path, corrupt: bool = False) -> Path:
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((6, 6, 3), 40 * i + (100 if label == "dogs" else 0), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    if corrupt:
        (root / "dogs" / "broken.png").write_bytes(b"not a png")
    return root


def test_digits_at_another_resolution_and_channels():
    data = load_dataset(name="digits", resolution=16, channels=3, limit=10)
    assert data.images.shape == (10, 3, 16, 16)
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert torch.equal(data.images[:, 0], data.images[:, 1])


def test_limit_takes_a_fixed_subset_of_every_class():
    data = load_dataset(name="mnist5k", limit=200)
    assert data.images.shape == (200, 1, 28, 28)
    assert len(data.labels.unique()) == 10  # the file is sorted by class: a prefix would be all zeros
    assert torch.equal(data.labels, load_dataset(name="mnist5k", limit=200).labels)


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    data = load_dataset(name="imagefolder", root=str(_folder(tmp_path)), channels=3)
    assert data.images.shape == (6, 3, 6, 6)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.num_classes == 2


def test_corrupt_image_is_named_and_stops_the_run_unless_skipped(tmp_path, caplog):
    root = str(_folder(tmp_path, corrupt=True))
    with pytest.raises(ValueError, match=r"(?s)1 unreadable image.*broken\.png.*skip_bad_images: true"):
        load_dataset(name="imagefolder", root=root, channels=3)
    data = load_dataset(name="imagefolder", root=root, channels=3, skip_bad_images=True)
    assert len(data) == 6
    assert "broken.png" in caplog.text


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(name="fashion-mnist", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_dataset(name="imagefolder", root=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="CIFAR10 not found"):
        load_dataset(name="torchvision", torchvision_class="CIFAR10", root=str(tmp_path))


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian():
    data = load_dataset(name="fashion-mnist", limit=50)
    assert data.images.shape == (50, 1, 28, 28)
