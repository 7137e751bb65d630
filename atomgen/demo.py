"""``atomgen demo``: a small DDPM trained on the digits twice — plain, then with atom separation.

Both runs use the same seed, so they start from the same weights and see the same batches, noises and
timesteps; they differ only by ``λ · L_atom`` at the UNet's mid block (method.md §4). Each model is then
sampled through a stock diffusers ``DDIMPipeline`` and measured with one common, parameter-free atom
distance (``AtomSeparation(learn_roles=False)``, every particle a proton, method.md §3), and the learned
importances of the atom model are drawn as heat maps. Everything lands in one run directory:

    config.json             the resolved config, written before any work starts
    samples_baseline.png    sample grid of the plain model
    samples_atom.png        sample grid of the model trained with atom separation
    importance_atom.png     the atom model's importance s = 1 − r^neutron over its samples (method.md §3)
    summary.json            losses, diversity numbers and wall times per model, plus the config
    baseline/, atom/        the trained models as stock ``DDPMPipeline`` directories; the atom model's
                            separation module in ``atom/separation`` (the stock loader ignores it)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .data import ImageData, load_digits_images
from .hooks import AttachHandle, attach
from .io import atomic_directory, write_atomic, write_json
from .separation import MODES, AtomSeparation

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo"]

SITE = "mid_block"
VARIANTS = ("baseline", "atom")


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, sized for about 4 minutes on 2 CPU cores at the defaults.

    Args:
        steps: optimiser steps per model.
        batch_size: images per step (the atoms of one separation batch).
        num_samples: images sampled from each model.
        num_inference_steps: DDIM steps at sampling time.
        seed: seeds the weights, the batches, the training noise and the sampling noise.
        weight: ``λ``, the weight of ``L_atom`` in the atom run.
        mode: the atom run's pair weights, ``"signed"`` (``q_i q_j``) or ``"repulsive"`` (``s_i s_j``),
            method.md §4.
        learning_rate: AdamW peak learning rate (cosine decay after a short warm-up).
        block_out_channels: UNet widths; the last one is the mid block's width, the separation's ``dim``.
        num_train_timesteps: DDPM training timesteps.
        probe_timestep: timestep at which samples are re-noised and fed back to read the mid-block
            features for the atom distance and the importance maps (small: nearly clean images).
    """

    steps: int = 700
    batch_size: int = 128
    num_samples: int = 64
    num_inference_steps: int = 50
    seed: int = 0
    weight: float = 0.1
    mode: str = "signed"
    learning_rate: float = 2e-3
    block_out_channels: tuple[int, ...] = (32, 64)
    num_train_timesteps: int = 1000
    probe_timestep: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_samples", "num_inference_steps", "num_train_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_size", "num_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2 (atoms are separated from each other), got 1")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number ≥ 0, got {self.weight!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({self.num_inference_steps}) cannot exceed num_train_timesteps "
                f"({self.num_train_timesteps})"
            )
        if not 0 <= self.probe_timestep < self.num_train_timesteps:
            raise ValueError(
                f"probe_timestep must lie in [0, {self.num_train_timesteps - 1}], got {self.probe_timestep}"
            )
        widths = tuple(self.block_out_channels)
        if len(widths) < 1 or any(not isinstance(w, int) or w < 8 or w % 8 for w in widths):
            raise ValueError(f"block_out_channels must be multiples of 8, got {self.block_out_channels!r}")
        object.__setattr__(self, "block_out_channels", widths)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A smoke-test size that finishes in seconds (the samples are noise, not digits)."""
        sizes = {"steps": 30, "batch_size": 32, "num_samples": 16, "num_inference_steps": 10}
        return cls(**{**sizes, **overrides})


# ------------------------------------------------------------------------------------------ the demo
def run_demo(
    out_dir: str | os.PathLike[str],
    config: DemoConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train, sample and compare the baseline and the atom-separation DDPM on the digits.

    Args:
        out_dir: run directory (created if missing); see the module docstring for what it receives.
        config: the demo's settings; ``None`` for :class:`DemoConfig`'s defaults.
        progress: show tqdm bars for training and sampling.
        **overrides: any :class:`DemoConfig` field (``steps=…``, ``batch_size=…``, ``num_samples=…``,
            ``num_inference_steps=…``, ``seed=…``, ``weight=…``, …), applied on top of ``config``.

    Returns:
        The summary that is also written to ``summary.json``.

    Example:
        >>> from atomgen.demo import run_demo
        >>> summary = run_demo("runs/demo", steps=700, weight=0.1)  # doctest: +SKIP
        >>> summary["models"]["atom"]["atom_distance"]  # doctest: +SKIP
    """
    config = config or DemoConfig()
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DemoConfig)})
    if unknown:
        raise TypeError(f"run_demo got unknown settings {unknown}; DemoConfig fields are allowed")
    config = dataclasses.replace(config, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(config))
    started = time.perf_counter()

    data = load_digits_images()
    logger.info("digits: %d images of %s; writing to %s", len(data), data.image_shape, out)
    # One parameter-free measurer for both models: every particle a proton, so d̄ is a plain mean distance.
    measurer = AtomSeparation(dim=config.block_out_channels[-1], learn_roles=False)
    models: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        weight = config.weight if variant == "atom" else None
        trained = _train(data, config, weight=weight, progress=progress, desc=variant)
        samples, sample_seconds = _sample(trained.pipeline(), config, progress=progress, desc=variant)
        probe = _probe(trained, samples, measurer, config)
        _save_grid(out / f"samples_{variant}.png", samples)
        if trained.handle is not None:
            _save_importance(out / f"importance_{variant}.png", samples, probe["importance"], probe["grid"])
        _save_model(out / variant, trained)
        models[variant] = {
            **trained.stats(),
            "atom_distance": probe["atom_distance"],
            "pixel_distance": _mean_pairwise_distance(samples.flatten(1)),
            "sample_seconds": sample_seconds,
            "wall_seconds": trained.seconds + sample_seconds,
            **({"importance_mean": probe["importance"].mean().item()} if trained.handle else {}),
        }
        logger.info("%s: %s", variant, {k: round(v, 4) for k, v in models[variant].items()})

    reference = data.images[
        torch.randperm(len(data), generator=_generator(config.seed))[: config.num_samples]
    ]
    summary = {
        "models": models,
        "real_data": {"pixel_distance": _mean_pairwise_distance(reference.flatten(1))},
        "measurement": {
            "site": SITE,
            "probe_timestep": config.probe_timestep,
            "atom_distance": "off-diagonal mean of AtomSeparation(learn_roles=False).atom_distance "
            "over each model's own samples' mid-block features",
            "pixel_distance": "mean pairwise L2 distance of the samples in [-1, 1] pixel space",
        },
        "dataset": {"name": data.name, "num_images": len(data), "image_shape": list(data.image_shape)},
        "config": dataclasses.asdict(config),
        "versions": {"atomgen": __version__, "torch": torch.__version__, "diffusers": _diffusers_version()},
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(out / "summary.json", summary)
    logger.info("demo finished in %.1f s: %s", summary["wall_seconds"], out)
    return summary


# ------------------------------------------------------------------------------------------ training
@dataclass
class _Trained:
    unet: UNet2DModel
    scheduler: DDPMScheduler
    handle: AttachHandle | None
    task_losses: list[float]
    atom_losses: list[float]
    separation_losses: list[float]
    seconds: float

    def pipeline(self) -> DDIMPipeline:
        return DDIMPipeline(unet=self.unet, scheduler=DDIMScheduler.from_config(self.scheduler.config))

    def stats(self) -> dict[str, float]:
        stats = {"task_loss_final": _tail_mean(self.task_losses), "task_loss_mean": _mean(self.task_losses)}
        if self.handle is not None:
            stats["atom_loss_final"] = _tail_mean(self.atom_losses)
            stats["separation_loss_final"] = _tail_mean(self.separation_losses)
            stats["separation_loss_mean"] = _mean(self.separation_losses)
        stats["train_seconds"] = self.seconds
        return stats


def _build_unet(config: DemoConfig, channels: int, size: int) -> UNet2DModel:
    widths = config.block_out_channels
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1),
        norm_num_groups=8,
    )


def _train(
    data: ImageData, config: DemoConfig, *, weight: float | None, progress: bool, desc: str
) -> _Trained:
    """DDPM training with epsilon prediction; with ``weight`` set, ``λ · L_atom`` at the mid block."""
    torch.manual_seed(config.seed)  # same initial weights for every variant
    channels, size, _ = data.image_shape
    unet = _build_unet(config, channels, size)
    scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2"
    )
    params = list(unet.parameters())
    handle = None
    if weight is not None:
        separation = AtomSeparation(dim=unet.config.block_out_channels[-1], mode=config.mode)
        handle = attach(unet, SITE, separation, weight=weight)
        params += [p for p in separation.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(100, config.steps // 10), config.steps)
    rng = _generator(config.seed)  # same batches, noises and timesteps for every variant
    task_losses: list[float] = []
    atom_losses: list[float] = []
    separation_losses: list[float] = []

    started = time.perf_counter()
    unet.train()
    bar = tqdm(range(config.steps), desc=f"train {desc}", disable=not progress, leave=False)
    for _ in bar:
        index = torch.randint(len(data), (config.batch_size,), generator=rng)
        x0 = data.images[index]
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(config.num_train_timesteps, (config.batch_size,), generator=rng)
        x_t = scheduler.add_noise(x0, noise, t)
        task_loss = F.mse_loss(unet(x_t, t).sample, noise)
        loss = task_loss
        if handle is not None:
            loss = loss + handle.loss()
            atom_losses.append(handle.output.loss.item())
            separation_losses.append(handle.output.separation.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        task_losses.append(task_loss.item())
        bar.set_postfix(
            mse=f"{task_losses[-1]:.4f}", **({"atom": f"{atom_losses[-1]:.4f}"} if handle else {})
        )
    unet.eval()
    seconds = time.perf_counter() - started
    return _Trained(unet, scheduler, handle, task_losses, atom_losses, separation_losses, seconds)


# ----------------------------------------------------------------------------------- sampling, probes
def _sample(
    pipe: DDIMPipeline, config: DemoConfig, *, progress: bool, desc: str
) -> tuple[torch.Tensor, float]:
    """``num_samples`` images in [-1, 1], ``(N, C, H, W)``, from the same noise for every variant."""
    pipe.set_progress_bar_config(disable=not progress, desc=f"sample {desc}", leave=False)
    started = time.perf_counter()
    images = pipe(
        batch_size=config.num_samples,
        generator=_generator(config.seed + 1),
        num_inference_steps=config.num_inference_steps,
        output_type="pt",
    ).images
    return images * 2 - 1, time.perf_counter() - started


@torch.no_grad()
def _probe(trained: _Trained, samples: torch.Tensor, measurer: AtomSeparation, config: DemoConfig) -> dict:
    """Feed the samples back at ``probe_timestep`` and read the mid block: common d̄, learned importance."""
    t = torch.full((samples.shape[0],), config.probe_timestep, dtype=torch.long)
    noise = torch.randn(samples.shape, generator=_generator(config.seed + 2))
    x_t = trained.scheduler.add_noise(samples, noise, t)
    with attach(trained.unet, SITE, measurer, weight=0.0) as measured:
        trained.unet(x_t, t)
    distance = measured.output.atom_distance
    off_diagonal = ~torch.eye(distance.shape[0], dtype=torch.bool)
    probe: dict[str, Any] = {"atom_distance": distance[off_diagonal].mean().item()}
    if trained.handle is not None:  # the same forward pass went through the training hook
        own = trained.handle.output
        probe["importance"], probe["grid"] = own.importance, own.grid
    return probe


def _mean_pairwise_distance(x: torch.Tensor) -> float:
    distances = torch.cdist(x.double(), x.double())
    return distances[~torch.eye(x.shape[0], dtype=torch.bool)].mean().item()


def _save_model(directory: Path, trained: _Trained) -> None:
    """A stock ``DDPMPipeline`` (loadable by ``DiffusionPipeline.from_pretrained``), module beside it."""
    with atomic_directory(directory) as tmp:
        DDPMPipeline(unet=trained.unet, scheduler=trained.scheduler).save_pretrained(tmp)
        if trained.handle is not None:
            trained.handle.module.save_pretrained(tmp / "separation")


# ------------------------------------------------------------------------------------------- pictures
# A few stops of matplotlib's "inferno" map, interpolated linearly (no matplotlib dependency).
_INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB in [0, 255] (inferno)."""
    position = np.clip(values, 0, 1) * (len(_INFERNO) - 1)
    low = np.floor(position).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (position - low)[..., None]
    return _INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac


def _tile(cells: np.ndarray, pad: int = 2) -> np.ndarray:
    """``(N, h, w, 3)`` uint8 cells → one near-square grid image with ``pad`` white pixels between."""
    n, h, w, _ = cells.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            cell
        )
    return grid


def _upscale(images: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upscaling so that small images are about 40 pixels wide."""
    factor = max(1, 40 // max(images.shape[-2:]))
    return F.interpolate(images, scale_factor=factor, mode="nearest")


def _to_rgb(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] → ``(N, H, W, 3)`` in [0, 1]."""
    unit = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(unit, 3, axis=-1) if unit.shape[-1] == 1 else unit


def _save_grid(path: Path, images: torch.Tensor) -> None:
    _save_png(path, _tile((_to_rgb(_upscale(images)) * 255).round().astype(np.uint8)))


def _save_importance(path: Path, images: torch.Tensor, importance: torch.Tensor, grid: tuple) -> None:
    """Importance ``s`` per particle on the particle grid, coloured (inferno), shaded by each sample."""
    big = _upscale(images)
    maps = importance.detach().float().reshape(-1, 1, *grid)
    maps = F.interpolate(maps, size=big.shape[-2:], mode="nearest")[:, 0].cpu().numpy()
    low, high = maps.min(), maps.max()  # stretch over the batch's range so that contrast is visible
    heat = _colormap((maps - low) / max(high - low, 1e-8)) / 255
    blended = heat * (0.3 + 0.7 * _to_rgb(big))  # strokes bright, background dim: both stay readable
    _save_png(path, _tile((blended * 255).round().astype(np.uint8)))


# -------------------------------------------------------------------------------------------- files
def _save_png(path: Path, pixels: np.ndarray) -> None:
    """``(H, W, 3)`` uint8 pixels → PNG file, written atomically."""
    image = Image.fromarray(pixels)
    write_atomic(path, lambda file: image.save(file, format="PNG"))


# ----------------------------------------------------------------------------------------- helpers
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _tail_mean(values: list[float]) -> float:
    """Mean of the last 10 % of the values (at least one): a less noisy 'final' loss."""
    return _mean(values[-max(1, len(values) // 10) :])


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
