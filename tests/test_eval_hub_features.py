"""DINOv2 and CLIP extractors: dgm-eval's preprocessing, FD_DINOv2 and PRDC against an independent
computation on a tiny saved ``Dinov2Model``, and the error without weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_vision import CLIP_SIDE, save_tiny_clip, save_tiny_dinov2

from atomgen.eval import load_clip, load_dinov2, load_extractor, run_eval
from atomgen.eval.hub_features import DINOV2_ID, IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def _known_image() -> Image.Image:
    """A 37×53 RGB image: smooth gradients plus a sharp edge (what a resize filter shows up on)."""
    y, x = np.mgrid[0:37, 0:53]
    array = np.stack([x * 255 / 52, y * 255 / 36, ((x > 20) ^ (y > 15)) * 255], -1).round().astype(np.uint8)
    return Image.fromarray(array)


def test_dinov2_preprocessing_is_dgm_eval(dinov2_folder):
    import torchvision.transforms as T

    image = _known_image()
    # dgm-eval's DINOv2 transform, on the PIL image
    dgm_eval = T.Compose(
        [T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
         T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )(image)  # fmt: skip
    extractor = load_dinov2(dinov2_folder)
    ours = extractor.preprocess(T.ToTensor()(image)[None])[0]
    assert ours.shape == dgm_eval.shape == (3, 224, 224)
    # The filter itself: PIL's bicubic on float pixels (mode "F"), channel by channel, is ours exactly.
    array = np.asarray(image, dtype=np.float32)
    channels = [
        np.asarray(Image.fromarray(array[..., c], mode="F").resize((224, 224), Image.BICUBIC))
        for c in range(3)
    ]
    pil_float = torch.from_numpy(np.stack(channels) / 255.0).float().clamp(0, 1)
    normalised = (pil_float - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    torch.testing.assert_close(ours, normalised, atol=1e-5, rtol=0)
    # PIL's RGB path rounds and clips to uint8 between its two passes: a grey level or so, except at a
    # few pixels of the sharp edge, where the clipped overshoot differs.
    differ = (ours - dgm_eval).abs() > 1.5 / 255 / min(IMAGENET_STD)
    assert differ.float().mean() < 1e-3 and (ours - dgm_eval).abs().mean() < 0.25 / 255 / min(IMAGENET_STD)
    assert "224×224" in extractor.preprocessing and "ImageNet" in extractor.preprocessing
    assert extractor.fd_name == "fd_dinov2" and str(dinov2_folder) in extractor.name


def _by_hand(folder, images: torch.Tensor) -> np.ndarray:
    """The definition, independently: transformers' forward on resized, normalised pixels; the CLS row of
    the (layer-normed) last hidden state."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    pixels = F.interpolate(images.expand(-1, 3, -1, -1), size=(224, 224), mode="bicubic", antialias=True)
    pixels = (pixels.clamp(0, 1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[:, 0].double().numpy()


def test_fd_dinov2_and_prdc_equal_an_independent_computation(dinov2_folder):
    import prdc as reference_prdc
    from scipy import linalg

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 20, 20, generator=generator)
    fake = (real[:36] + 0.3 * torch.rand(36, 3, 20, 20, generator=generator)).clamp(0, 1)
    report = run_eval(
        real, fake, ["fid", "prdc", "kid"], "dinov2", extractor_weights=dinov2_folder, device="cpu",
        batch_size=16, progress=False,
    )  # fmt: skip
    x, y = _by_hand(dinov2_folder, real), _by_hand(dinov2_folder, fake)
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert "fid" not in report["metrics"] and report["extractor"].startswith("dinov2")
    assert report["metrics"]["fd_dinov2"] == pytest.approx(expected, rel=1e-6)
    theirs = reference_prdc.compute_prdc(real_features=x, fake_features=y, nearest_k=5)
    for key, value in theirs.items():
        assert report["metrics"]["prdc"][key] == pytest.approx(value, rel=1e-6), key
    assert "layer-normed CLS token" in report["metrics"]["kid"]["features"]


def test_missing_weights_name_the_id_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(
        FileNotFoundError, match=rf"{DINOV2_ID}.*huggingface-cli download {DINOV2_ID}"
    ) as error:
        load_extractor("dinov2", "cpu")
    assert "--extractor-weights" in str(error.value) and "offline" in str(error.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_dinov2(tmp_path / "folder")
    with pytest.raises(ValueError, match="weights= applies to the dinov2 and clip"):
        load_extractor("inception", "cpu", weights=tmp_path)


def test_clip_preprocessing_is_clip_image_processor(tmp_path):
    from transformers import CLIPImageProcessor

    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    image = _known_image()
    processor = CLIPImageProcessor(size={"shortest_edge": CLIP_SIDE}, crop_size=CLIP_SIDE)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = clip.preprocess(torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None] / 255.0)[0]
    assert ours.shape == theirs.shape == (3, CLIP_SIDE, CLIP_SIDE)
    # Its resize rounds to uint8 (half a grey level), and clips overshoot at the sharp edge in between
    difference = (ours - theirs).abs() * 0.26 * 255  # in grey levels
    assert difference.mean() < 0.5 and difference.max() < 8
    with torch.no_grad():
        expected = clip.model.get_image_features(pixel_values=theirs[None])
    expected = getattr(expected, "pooler_output", expected)  # transformers 5: an output object
    with torch.no_grad():
        torch.testing.assert_close(clip.embed(theirs[None]), expected)
