"""Fashion-MNIST on any machine: Debian's package, a named folder, torchvision's layout, the download."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

import atomgen.data
from atomgen.data import FASHION_MNIST_DIR, fashion_mnist_cache, find_fashion_mnist, load_fashion_mnist


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, *, compress: bool = True) -> None:
    """The two idx files as the dataset ships them (big-endian headers: magic, counts, sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    image_bytes = np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.astype(np.uint8).tobytes()
    label_bytes = np.array([2049, n], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes()
    for stem, payload in (("train-images-idx3-ubyte", image_bytes), ("train-labels-idx1-ubyte", label_bytes)):
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)


@pytest.fixture
def tiny_set():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 28, 28)), np.array([7, 0, 9])


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Debian package and an empty download cache."""
    monkeypatch.setattr(atomgen.data, "FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setenv("ATOMGEN_DATA", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("layout", ["flat", "torchvision", "uncompressed"])
def test_reads_each_layout(tmp_path, tiny_set, layout):
    images, labels = tiny_set
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    write_idx(folder, images, labels, compress=layout != "uncompressed")
    data = load_fashion_mnist(tmp_path)
    assert find_fashion_mnist(tmp_path) == folder
    assert data.images.shape == (3, 1, 28, 28) and data.labels.tolist() == [7, 0, 9]
    expected = torch.from_numpy(images[:, None].astype(np.float32)) / 127.5 - 1.0
    torch.testing.assert_close(data.images, expected)


def test_cache_location_follows_atomgen_data(monkeypatch, tmp_path):
    monkeypatch.setenv("ATOMGEN_DATA", str(tmp_path))
    assert fashion_mnist_cache() == tmp_path / "fashion-mnist"
    monkeypatch.delenv("ATOMGEN_DATA")
    assert fashion_mnist_cache() == Path.home() / ".cache" / "atomgen" / "fashion-mnist"


def test_falls_back_to_torchvision_download(nowhere, tiny_set, monkeypatch):
    """Where the network allows, torchvision fetches the files into the cache (here its download is
    replaced by writing the files where torchvision puts them: no network in the tests)."""
    calls = []

    def download(root, train, download):
        calls.append((root, train, download))
        write_idx(Path(root) / "FashionMNIST" / "raw", *tiny_set)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", download)
    data = load_fashion_mnist()
    assert calls == [(str(nowhere / "cache" / "fashion-mnist"), True, True)]
    assert data.labels.tolist() == [7, 0, 9]
    load_fashion_mnist()  # read from the cache: no second download
    assert len(calls) == 1


def test_no_network_and_no_package_is_a_clear_error(nowhere, monkeypatch):
    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_fashion_mnist()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "torchvision" in message
    assert "Error downloading" in message and str(nowhere / "cache") in message


def test_a_named_folder_is_never_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda **_: pytest.fail("downloaded"))
    with pytest.raises(FileNotFoundError, match="a root was given"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_package_comes_first(monkeypatch, tmp_path):
    monkeypatch.setenv("ATOMGEN_DATA", str(tmp_path))  # an empty cache: Debian's files are found first
    assert find_fashion_mnist() == FASHION_MNIST_DIR
    assert len(load_fashion_mnist(download=False).labels) == 60_000
