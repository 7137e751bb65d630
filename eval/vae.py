"""VAE scores: reconstruction error, KL to the prior per latent channel, active units, and prior samples.

For an ``AutoencoderKL`` with posterior ``q(z|x) = N(μ(x), diag σ²(x))`` and prior ``N(0, I)`` (in the
VAE's own latent space, before ``scaling_factor``/``shift_factor``: the space its KL term was trained in):

- **reconstruction error**: per image, the mean squared pixel error of the reconstruction from the
  posterior *mean* (deterministic: no posterior sample), pixels in ``[0, 1]`` as everywhere in
  ``atomgen.eval`` (training's ``L_task`` is the same error in ``[-1, 1]``, 4× larger); then the mean
  over images. The reconstruction is what :class:`~atomgen.pipelines.AtomVAEPipeline` returns, clamped
  to ``[0, 1]``.
- **KL per latent channel**: ``KL_u(x) = ½ (μ_u² + σ_u² − 1 − log σ_u²)`` for each latent unit ``u``
  (the closed form of Kingma & Welling 2014, App. B), averaged over the data and over the unit's
  positions: nats per unit. Summed over all units it is the VAE's rate, :attr:`VAEScores.kl` (nats per
  image, what ``posterior.kl()`` returns, averaged over the data).
- **active units** (Burda et al. 2016, §5.2): unit ``u`` is active when ``Cov_x(E_{q(z|x)}[z_u]) =
  Var_x(μ_u(x))`` exceeds a threshold, 0.01. A convolutional latent has ``C × h × w`` units: here a *unit
  is one channel at one position* (each is a latent variable of the factorised posterior, as each
  dimension is in Burda et al.'s fully connected VAEs), and the counts are also reported per channel
  (active positions; mean variance over positions). The threshold is relative to the unit prior, so it
  is applied in the unscaled latent space.
- **prior samples**: ``z ~ N(0, I)`` decoded by :class:`~atomgen.pipelines.AtomVAEPipeline`, scored by
  :func:`atomgen.eval.run_eval` like any generated images (FID, PRDC, Vendi, LPIPS diversity, modes).

Example:
    >>> import torch
    >>> from diffusers import AutoencoderKL
    >>> from atomgen.eval import prior_samples, vae_scores
    >>> _ = torch.manual_seed(0)
    >>> vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(4, 8),
    ...     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ...     norm_num_groups=4, sample_size=8)
    >>> scores = vae_scores(vae, torch.rand(16, 1, 8, 8))
    >>> scores.num_units, scores.latent_shape  # 2 channels on a 4 × 4 grid
    (32, (2, 4, 4))
    >>> prior_samples(vae, 3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 1, 8, 8])
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from atomgen.pipelines import AtomVAEPipeline

from .sources import ImageSource, draw_samples, open_source, vae_directory

logger = logging.getLogger(__name__)

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: Var_x(μ_u) above it marks an active unit

__all__ = [
    "ACTIVE_THRESHOLD",
    "VAEScoreSums",
    "VAEScores",
    "load_vae_pipeline",
    "prior_samples",
    "reconstruct",
    "vae_scores",
]


@dataclass(frozen=True)
class VAEScores:
    """What :func:`vae_scores` measured on a set of images (definitions: this module's docstring).

    Attributes:
        images: how many images were encoded.
        latent_shape: ``(C, h, w)`` of one latent.
        reconstruction_mse: mean over images of the per-image MSE, pixels in ``[0, 1]``, reconstruction
            from the posterior mean.
        reconstruction_mse_std: its standard deviation over images.
        kl: ``KL(q(z|x) ‖ N(0, I))`` summed over the latent units, mean over images (nats per image).
        kl_per_channel: per channel, the KL per unit averaged over images and positions (nats).
        variance_per_channel: per channel, ``Var_x(μ_u)`` averaged over the channel's positions.
        active_units: units (channel × position) with ``Var_x(μ_u) > threshold``.
        num_units: ``C · h · w``.
        active_units_per_channel: active positions in each channel.
        threshold: the activity threshold.
    """

    images: int
    latent_shape: tuple[int, int, int]
    reconstruction_mse: float
    reconstruction_mse_std: float
    kl: float
    kl_per_channel: tuple[float, ...]
    variance_per_channel: tuple[float, ...]
    active_units: int
    num_units: int
    active_units_per_channel: tuple[int, ...]
    threshold: float

    def to_dict(self) -> dict:
        """Plain JSON values, with how the numbers were taken."""
        values = asdict(self)
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = list(value)
        values["unit"] = "channel × position"
        values["reconstruction"] = "decoded posterior mean, clamped to [0, 1]; MSE on [0, 1] pixels"
        return values


def load_vae_pipeline(
    vae: str | Path | AutoencoderKL | AtomVAEPipeline, device: torch.device | str | None = None
) -> AtomVAEPipeline:
    """An :class:`AtomVAEPipeline` (no progress bar) from a pipeline, an ``AutoencoderKL`` or a directory.

    Args:
        vae: an ``AtomVAEPipeline``; an ``AutoencoderKL``; or a directory
            :func:`~atomgen.eval.sources.vae_directory` recognises (a run directory of ``atomgen train``
            with a VAE config, its ``vae/`` folder, a saved ``AtomVAEPipeline``).
        device: where to move it (default: where it is).

    Raises:
        ValueError: the directory holds no VAE.
    """
    if isinstance(vae, AtomVAEPipeline):
        pipe = vae
    elif isinstance(vae, AutoencoderKL):
        pipe = AtomVAEPipeline(vae)
    else:
        folder = vae_directory(vae)
        if folder is None:
            raise ValueError(
                f"{vae} holds no VAE: expected a run directory of `atomgen train` with model.family=vae "
                "(its vae/ folder), a saved AutoencoderKL (config.json) or a saved AtomVAEPipeline"
            )
        pipe = AtomVAEPipeline.from_pretrained(folder)
    pipe.vae.eval()
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prior_samples(
    vae: str | Path | AutoencoderKL | AtomVAEPipeline,
    num_samples: int,
    *,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decoded prior samples ``z ~ N(0, I)``: ``(N, C, H, W)`` in ``[0, 1]``, on the CPU.

    The same draws as :func:`atomgen.eval.run_eval` scores for a VAE: batches of ``batch_size`` from one
    ``generator`` (a CPU generator gives the same images on any device).
    """
    pipe = load_vae_pipeline(vae)
    images = draw_samples(pipe, num_samples, batch_size, generator)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruct(
    vae: str | Path | AutoencoderKL | AtomVAEPipeline,
    images: ImageSource | torch.Tensor | np.ndarray | str | Path,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Reconstructions from the posterior mean, ``(N, C, H, W)`` in ``[0, 1]`` on the CPU, of ``images``
    (anything :func:`~atomgen.eval.open_source` accepts, in ``[0, 1]``)."""
    pipe = load_vae_pipeline(vae)
    source = open_source(images)
    chunks = [_decode_mean(pipe, _encode(pipe, batch))[0].cpu() for batch in source.batches(batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def vae_scores(
    vae: str | Path | AutoencoderKL | AtomVAEPipeline,
    images: ImageSource | torch.Tensor | np.ndarray | str | Path,
    *,
    batch_size: int = 64,
    threshold: float = ACTIVE_THRESHOLD,
    progress: bool = False,
) -> VAEScores:
    """Reconstruction error, KL per latent channel and active units of ``vae`` on ``images``.

    Args:
        vae: an ``AutoencoderKL``, an ``AtomVAEPipeline`` or a directory (see :func:`load_vae_pipeline`).
        images: held-out images in ``[0, 1]``: anything :func:`~atomgen.eval.open_source` accepts (a
            dataset name, a folder, an ``.npz``, a tensor ``(N, C, H, W)``). At least 2 (a variance).
        batch_size: images per encoder pass.
        threshold: ``Var_x(μ_u)`` above which a unit is active (Burda et al.: 0.01).
        progress: a progress bar.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    pipe = load_vae_pipeline(vae)
    source = open_source(images)
    if len(source) < 2:
        raise ValueError(f"VAE scores need at least 2 images (a variance over the data), got {len(source)}")
    scores = VAEScoreSums(pipe, threshold)
    bar = tqdm(total=len(source), desc="VAE scores", unit="img", disable=not progress)
    for batch, indices in source.indexed_batches(batch_size):
        scores.update(batch, indices)
        bar.update(len(batch))
    bar.close()
    return scores.result()


class VAEScoreSums:
    """The running sums behind :func:`vae_scores`, fed batch by batch (``update(batch, indices)``), so
    that they can share one decoding pass of the images with the feature extractors.

    Args:
        pipe: the VAE pipeline (see :func:`load_vae_pipeline`).
        threshold: ``Var_x(μ_u)`` above which a unit is active.
    """

    def __init__(self, pipe: AtomVAEPipeline, threshold: float = ACTIVE_THRESHOLD):
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.pipe, self.threshold = pipe, threshold
        self.mse: list[torch.Tensor] = []
        self.kl_units: torch.Tensor | None = None
        self.mean_stats = _UnitVariance()

    @torch.no_grad()
    def update(self, batch: torch.Tensor, indices: np.ndarray | None = None) -> None:
        posterior = _encode(self.pipe, batch)
        reconstruction, mean = _decode_mean(self.pipe, posterior)
        error = (reconstruction.double() - batch.to(reconstruction).double()) ** 2
        self.mse.append(error.flatten(1).mean(1).cpu())
        mu, var, logvar = (t.double() for t in (posterior.mean, posterior.var, posterior.logvar))
        kl = (0.5 * (mu**2 + var - 1.0 - logvar)).sum(0).cpu()  # per unit (C, h, w), summed over images
        self.kl_units = kl if self.kl_units is None else self.kl_units + kl
        self.mean_stats.update(mean)

    def result(self) -> VAEScores:
        errors = torch.cat(self.mse)
        count = len(errors)
        if count < 2:
            raise ValueError(f"VAE scores need at least 2 images (a variance over the data), got {count}")
        kl_units = self.kl_units / count  # (C, h, w): mean over images
        variance = self.mean_stats.variance()  # (C, h, w)
        active = variance > self.threshold
        return VAEScores(
            images=count,
            latent_shape=tuple(variance.shape),
            reconstruction_mse=float(errors.mean()),
            reconstruction_mse_std=float(errors.std()),
            kl=float(kl_units.sum()),
            kl_per_channel=tuple(kl_units.flatten(1).mean(1).tolist()),
            variance_per_channel=tuple(variance.flatten(1).mean(1).tolist()),
            active_units=int(active.sum()),
            num_units=active.numel(),
            active_units_per_channel=tuple(active.flatten(1).sum(1).tolist()),
            threshold=float(self.threshold),
        )


def _encode(pipe: AtomVAEPipeline, batch: torch.Tensor):
    """The posterior of images in ``[0, 1]``, preprocessed as the pipeline does (to ``[-1, 1]``)."""
    side = pipe.vae_scale_factor
    if batch.shape[-1] % side or batch.shape[-2] % side:  # the processor would resize them silently
        raise ValueError(
            f"images of {batch.shape[-2]}×{batch.shape[-1]} px do not fit a VAE that downsamples by {side}: "
            f"their sides must be multiples of {side}"
        )
    if batch.shape[1] != pipe.vae.config.in_channels:
        raise ValueError(
            f"images have {batch.shape[1]} channels, the VAE takes {pipe.vae.config.in_channels}"
        )
    pixels = pipe.image_processor.preprocess(batch).to(pipe.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist


def _decode_mean(pipe: AtomVAEPipeline, posterior) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction in ``[0, 1]``, posterior mean): the pipeline's reconstruction with
    ``sample_posterior=False``, without its round trip through the scaled latents."""
    mean = posterior.mode()
    decoded = pipe.vae.decode(mean).sample
    return pipe.image_processor.postprocess(decoded, output_type="pt"), mean


class _UnitVariance:
    """Streamed per-unit mean and variance in float64 (Chan et al.'s pairwise merge): a full covariance
    of ``C·h·w`` units is not needed for active units, and could not be held for large latents."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None  # Σ (x − mean)²

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        n = len(x)
        batch_mean = x.mean(0)
        batch_scatter = ((x - batch_mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.scatter = n, batch_mean, batch_scatter
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.scatter += batch_scatter + delta**2 * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        """The unbiased variance of each unit over everything added."""
        return self.scatter / (self.count - 1)
