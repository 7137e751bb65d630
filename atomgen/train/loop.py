"""Training diffusion models (UNet or DiT; ε, v or rectified-flow objective) and VAEs with a separation
loss attached, on accelerate.

Everything random is a function of ``(seed, step)`` — which images form a batch, the noise, the
timesteps, the flips — so a run resumed from a checkpoint continues exactly as the uninterrupted run
would have, and two processes draw the same global batch as one process does.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from .. import seeding
from ..data import ImageData
from ..distributed import row_offset
from ..hooks import AttachHandle, attach
from ..io import atomic_directory, write_json, write_text
from ..pipelines.pipeline_utils import SITE_FILE
from ..separation import AtomOutput, AtomSeparation
from . import checkpoints
from .config import ExperimentConfig
from .models import build_model, build_scheduler, build_separation, probe_site, site_of
from .run_lock import run_lock

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is left as it was."""


@dataclass
class _Progress:
    """The loop's own state, saved with every checkpoint."""

    step: int = 0
    skipped: int = 0
    nonfinite_in_row: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "skipped": self.skipped, "nonfinite_in_row": self.nonfinite_in_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.skipped, self.nonfinite_in_row = (
            state["step"],
            state["skipped"],
            state["nonfinite_in_row"],
        )


def train(
    config: ExperimentConfig,
    *,
    resume: str | None = None,
    dry_run: bool = False,
    on_step_end: StepCallback | None = None,
    progress: bool = True,
) -> Path:
    """Train the model of ``config`` and save it where diffusers loads it; returns the run directory.

    Args:
        config: the experiment (see :mod:`atomgen.train.config`).
        resume: ``"latest"`` or a checkpoint directory to continue from.
        dry_run: build everything, write the resolved config, train nothing.
        on_step_end: called as ``on_step_end(step, metrics)`` after every optimizer step.
        progress: show the progress bar (on the main process).

    The run directory receives ``config.yaml`` (before training), ``metrics.jsonl``, ``checkpoints/``
    and, at the end, ``pipeline/`` (a ``DDPMPipeline``, or an ``AtomClassConditionalPipeline`` for a
    class-conditional UNet or a DiT, with the separation module in ``pipeline/separation``) or ``vae/``
    (an ``AutoencoderKL``). A flow model's pipeline holds a ``FlowMatchEulerDiscreteScheduler``.

    Raises:
        RunLocked: another live process is training the same run directory
            (:mod:`atomgen.train.run_lock`).
    """
    if int(os.environ.get("RANK", "0")) != 0:  # the main process (rank 0) holds the run's lock for all
        return _train(config, resume, dry_run, on_step_end, progress)
    with run_lock(config.train.output_dir):
        return _train(config, resume, dry_run, on_step_end, progress)


def _train(
    config: ExperimentConfig,
    resume: str | None,
    dry_run: bool,
    on_step_end: StepCallback | None,
    progress: bool,
) -> Path:
    cfg = config.train
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
    )
    processes = accelerator.num_processes
    micro_batch = cfg.batch_size // cfg.gradient_accumulation_steps
    if cfg.batch_size % (cfg.gradient_accumulation_steps * processes):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} must be divisible by gradient_accumulation_steps × processes"
            f" = {cfg.gradient_accumulation_steps} × {processes}"
        )
    torch.manual_seed(cfg.seed)
    data = config.data.load()
    if len(data) < cfg.batch_size:
        raise ValueError(f"the dataset has {len(data)} images, fewer than train.batch_size={cfg.batch_size}")
    _check_labels(data, config.model.num_classes)
    model = build_model(config.model, data.image_shape)
    site = site_of(config.separation, config.model)
    site_shape = probe_site(model, site, data.image_shape)
    separation = build_separation(config.separation, site_shape)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", config.to_yaml())
    logger.info(
        "%s: %d images %s, %s with %.2fM parameters, separation %s at %r %s, %d process(es)",
        run_dir,
        len(data),
        tuple(data.image_shape),
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        config.separation.method,
        site,
        tuple(site_shape),
        processes,
    )
    if dry_run:
        return run_dir

    separation_params = list(separation.parameters()) if separation is not None else []
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *separation_params], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    lr_schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps
    )
    ema = None
    if cfg.ema_decay is not None:
        ema = EMAModel(
            model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config
        )
    if config.model.family == "vae":
        objective: nn.Module = _VAEObjective(model, config.model.kl_weight)
    else:
        objective = _DenoiserObjective(model, build_scheduler(config.model))
    objective, optimizer = accelerator.prepare(objective, optimizer)
    raw_model = model  # the generator inside the (possibly DDP-wrapped) objective
    if separation is not None:
        separation.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)
    state = _Progress()
    # Order matters: load_state restores registered objects in the order they were registered.
    for stateful in (lr_schedule, state, ema, separation):
        if stateful is not None:
            accelerator.register_for_checkpointing(stateful)
    if resume is not None:
        start = checkpoints.resolve_resume(run_dir, resume)
        accelerator.load_state(str(start))
        logger.info("resumed from %s at step %d", start, state.step)
        if accelerator.is_main_process:
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    if cfg.tensorboard:
        accelerator.init_trackers("atomgen")

    handle = attach(raw_model, site, separation, weight=config.separation.weight) if separation else None
    sampler = _BatchSampler(len(data), cfg.batch_size, cfg.seed)
    existing = checkpoints.list_checkpoints(run_dir)
    last_good = existing[-1][1] if existing else None
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        desc="train",
        disable=not (progress and accelerator.is_main_process),
    )
    objective.train()
    while state.step < cfg.steps:
        started = time.perf_counter()
        step = state.step
        ramp = (
            min(1.0, (step + 1) / config.separation.warmup_steps) if config.separation.warmup_steps else 1.0
        )
        batch = sampler(step)
        totals: dict[str, float] = {}
        finite = True
        for micro in range(cfg.gradient_accumulation_steps):
            chunk = batch[micro * micro_batch : (micro + 1) * micro_batch]
            last = micro == cfg.gradient_accumulation_steps - 1
            with nullcontext() if last else accelerator.no_sync(objective):
                draws = _Draws(chunk, data, cfg.seed, step, micro, config, accelerator)
                task = objective(draws)
                if handle is not None and config.separation.within_class:  # pairs of one label only
                    handle.groups = draws.labels
                sep_term, parts = _separation_term(handle, processes)
                loss = (task + ramp * sep_term) / cfg.gradient_accumulation_steps
                finite = _all_finite(loss, accelerator)
                if not finite:
                    break
                accelerator.backward(loss)
            _accumulate(totals, {"L_task": task.detach(), **parts}, cfg.gradient_accumulation_steps)

        if finite:
            if separation_params:  # not wrapped in DDP: average its gradients like DDP would
                for p in separation_params:
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
            if cfg.grad_clip is not None:
                accelerator.clip_grad_norm_([*objective.parameters(), *separation_params], cfg.grad_clip)
            optimizer.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(raw_model.parameters())
            state.nonfinite_in_row = 0
        else:
            state.skipped += 1
            state.nonfinite_in_row += 1
            logger.warning(
                "step %d: non-finite loss, step skipped (%d in a row)", step, state.nonfinite_in_row
            )
            if state.nonfinite_in_row >= cfg.max_nonfinite:
                raise TrainingDiverged(
                    f"{state.nonfinite_in_row} non-finite losses in a row at step {step}; stopping. "
                    f"The last good checkpoint is {last_good or 'none (none was written yet)'}. "
                    "Lower train.learning_rate or separation.weight, or set train.grad_clip, then resume."
                )
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)

        metrics = _metrics(totals, accelerator, processes)
        metrics.update(
            step=state.step,
            step_time=time.perf_counter() - started,
            lr=lr_schedule.get_last_lr()[0],
            skipped=state.skipped,
        )
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            _log(run_dir, metrics, accelerator)
            bar.set_postfix(loss=f"{metrics.get('L_task', float('nan')):.4f}")
        if state.step in cfg.snapshot_steps and accelerator.is_main_process:
            snapshot = run_dir / "snapshots" / f"step-{state.step}"
            if not snapshot.exists():  # written before the step's checkpoint, so no resume can skip it
                _export(snapshot, raw_model, ema, separation, config, site)
        due = state.step % cfg.checkpoint_every == 0 and not state.nonfinite_in_row
        if due or state.step == cfg.steps:  # no periodic checkpoint during a run of skipped steps
            last_good = _save_checkpoint(accelerator, run_dir, state.step, cfg.keep_checkpoints)
        if on_step_end is not None:
            on_step_end(state.step, metrics)
    bar.close()
    if handle is not None:
        handle.remove()
    if accelerator.is_main_process:
        _export(run_dir, raw_model, ema, separation, config, site)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


class _BatchSampler:
    """Global batch indices of a step: an epoch-seeded permutation, cut in consecutive batches."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size  # the incomplete last batch is dropped
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = seeding.generator(self.seed, "train-shuffle", epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator)
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


class _Draws:
    """One micro-batch: the global draws made from ``(seed, step, micro)``, this process's slice taken."""

    def __init__(
        self, chunk: torch.Tensor, data: ImageData, seed: int, step: int, micro: int, config, accelerator
    ):
        generator = seeding.generator(seed, "train-draws", step, micro)
        size = len(chunk)
        images = data.images[chunk]
        if config.data.hflip:
            flip = torch.rand(size, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if config.model.family == "vae":  # noise of the posterior sample, in latent space
            factor = 2 ** (len(config.model.block_out_channels) - 1)
            side = images.shape[-1] // factor
            noise = torch.randn(size, config.model.latent_channels, side, side, generator=generator)
        else:
            noise = torch.randn(images.shape, generator=generator)
        if config.model.objective == "flow":  # the denoiser's timestep σ · T, σ ∈ (0, 1)
            # Logit-normal σ (SD3: Esser et al. 2024, §3.1), which beat uniform σ in their comparison: it
            # trains most in the middle of the path, where the velocity is hardest to predict.
            sigmas = torch.sigmoid(torch.randn(size, generator=generator))
            timesteps = sigmas * config.model.num_train_timesteps
        else:
            timesteps = torch.randint(0, config.model.num_train_timesteps, (size,), generator=generator)
        labels = None
        if config.model.num_classes is not None:  # drawn last: unconditional runs keep their stream
            labels = data.labels[chunk].clone()
            labels[torch.rand(size, generator=generator) < config.train.label_dropout] = (
                config.model.num_classes
            )
        share = size // accelerator.num_processes
        local = slice(accelerator.process_index * share, (accelerator.process_index + 1) * share)
        self.images = images[local].to(accelerator.device)
        self.noise = noise[local].to(accelerator.device)
        self.timesteps = timesteps[local].to(accelerator.device)
        self.labels = None if labels is None else labels[local].to(accelerator.device)


class _DenoiserObjective(nn.Module):
    """The MSE of a ``UNet2DModel``'s or ``DiTTransformer2DModel``'s ε-, v- or flow-prediction,
    class-conditional when the draws carry labels (the module accelerate wraps, so DDP sees a forward).

    The flow objective is rectified flow as diffusers' ``FlowMatchEulerDiscreteScheduler`` samples it:
    ``x_σ = (1 − σ) x_0 + σ ε``, the target the velocity ``v = ε − x_0``, the timestep ``σ · T``.
    """

    def __init__(self, model: nn.Module, scheduler: SchedulerMixin):
        super().__init__()
        self.model, self.scheduler = model, scheduler
        self.flow = isinstance(scheduler, FlowMatchEulerDiscreteScheduler)

    def forward(self, draws: _Draws) -> torch.Tensor:
        if self.flow:
            sigma = (draws.timesteps / self.scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
            noisy = (1.0 - sigma) * draws.images + sigma * draws.noise
            target = draws.noise - draws.images
        else:
            noisy = self.scheduler.add_noise(draws.images, draws.noise, draws.timesteps)
            if self.scheduler.config.prediction_type == "v_prediction":  # v = α_t ε − σ_t x_0
                target = self.scheduler.get_velocity(draws.images, draws.noise, draws.timesteps)
            else:
                target = draws.noise
        # the second argument is the timestep of both denoisers' forward
        prediction = self.model(noisy, draws.timesteps, class_labels=draws.labels).sample
        return F.mse_loss(prediction.float(), target.float())


class _VAEObjective(nn.Module):
    """Reconstruction MSE + β · KL of an ``AutoencoderKL``, the posterior sampled with the drawn noise."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.model, self.kl_weight = vae, kl_weight

    def forward(self, draws: _Draws) -> torch.Tensor:
        posterior = self.model.encode(draws.images).latent_dist
        latents = posterior.mean + posterior.std * draws.noise
        reconstruction = self.model.decode(latents).sample
        kl = posterior.kl().mean()  # summed over latent entries, averaged over the batch
        return F.mse_loss(reconstruction.float(), draws.images.float()) + self.kl_weight * kl


def _check_labels(data: ImageData, num_classes: int | None) -> None:
    """A class-conditional model needs a dataset whose labels fit its classes."""
    if num_classes is None:
        return
    if data.num_classes < 2:
        raise ValueError(
            f"model.num_classes={num_classes}, but the dataset {data.name!r} has no class labels (one "
            "class); put the images of each class in its own sub-folder, or set model.num_classes: null"
        )
    if data.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={num_classes}, but the dataset {data.name!r} has {data.num_classes} classes; "
            f"set model.num_classes: {data.num_classes}"
        )


def _separation_term(handle: AttachHandle | None, processes: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """``λ · L`` scaled for DDP (which averages gradients over processes), and its parts for the log."""
    if handle is None:
        return torch.zeros(()), {}
    try:
        output = handle.output
    except FloatingPointError as error:  # non-finite activations: the step is skipped and counted
        logger.warning("%s", error)
        return torch.tensor(float("nan")), {}
    # Each process's L is its share of the whole batch's loss; DDP divides the gradient by `processes`.
    term = handle.weight * output.loss * processes
    if isinstance(output, AtomOutput):  # method.md §4: L_atom = L_sep + μ_n C_n + μ_p C_p + μ_s C_s
        parts: dict[str, Any] = {"L_atom": output.loss.detach()}
        parts.update(_atom_parts(output))
    else:  # method.md §8
        parts = {"L_disp": output.loss.detach()}
    return term, parts


def _atom_parts(output: AtomOutput) -> dict[str, torch.Tensor]:
    """The loss's parts, the mean atom distance and the entropy of the importances (attribution spread)."""
    distance = output.atom_distance.detach()
    rows = torch.arange(distance.shape[0], device=distance.device)
    others = torch.ones_like(distance, dtype=torch.bool)
    others[rows, rows + row_offset(distance.shape[0])] = False
    importance = output.importance.detach()
    share = importance / importance.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(share * share.clamp_min(1e-12).log()).sum(1).mean()
    return {
        "L_sep": output.separation.detach(),
        "C_n": output.neutrality.detach(),
        "C_p": output.participation.detach(),
        "C_s": output.spacing.detach(),
        "C_c": output.commitment.detach(),
        "atom_distance": distance[others].mean() if others.any() else distance.new_zeros(()),
        "importance_entropy": entropy,
    }


def _all_finite(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Whether the loss is finite on every process (they skip a step together or not at all)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1).to(accelerator.device)
    return float(accelerator.reduce(bad, reduction="sum")) == 0


def _accumulate(totals: dict[str, Any], values: dict[str, Any], parts: int) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value.float() / parts


# Losses sum over processes (each process holds its share); the others are means over processes.
_SUMMED = ("L_atom", "L_disp", "L_sep", "C_n", "C_p", "C_s")


def _metrics(totals: dict[str, Any], accelerator: Accelerator, processes: int) -> dict[str, float]:
    if not totals:
        return {}
    keys = sorted(totals)
    stacked = torch.stack([torch.as_tensor(totals[k], dtype=torch.float32) for k in keys]).to(
        accelerator.device
    )
    reduced = accelerator.reduce(stacked, reduction="sum")
    return {k: float(v) * (1 if k in _SUMMED else 1 / processes) for k, v in zip(keys, reduced, strict=True)}


def _log(run_dir: Path, metrics: dict[str, float], accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        with open(run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps({k: v for k, v in metrics.items() if math.isfinite(v)}) + "\n")
    accelerator.log(metrics, step=int(metrics["step"]))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from (they will be written again)."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text(path, "".join(f"{line}\n" for line in kept))


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int) -> Path:
    """Every process writes its part into one temporary directory; the main process renames it."""
    final = checkpoints.checkpoint_dir(run_dir, step)
    tmp = checkpoints.temporary_dir(final)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left over from a crash mid-write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", {"step": step})
        checkpoints.publish(tmp, final)
        checkpoints.prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _export(
    run_dir: Path, model, ema: EMAModel | None, separation, config: ExperimentConfig, site: str
) -> None:
    """The weights (EMA when kept) where diffusers loads them, ``run_dir/pipeline`` (or ``vae``), with the
    separation module beside."""
    # A fresh model from the config, not a deepcopy: mid-run the training model carries the separation
    # hook, whose captured activations are part of the autograd graph.
    final = type(model).from_config(model.config)
    final.load_state_dict(model.state_dict())
    final = final.cpu().eval()
    if ema is not None:
        ema.copy_to(final.parameters())
    target = run_dir / ("vae" if isinstance(final, AutoencoderKL) else "pipeline")
    with atomic_directory(target) as tmp:
        if isinstance(final, AutoencoderKL):
            final.save_pretrained(tmp)
        elif config.model.num_classes is not None:  # no stock diffusers pipeline samples a class UNet2D
            from ..pipelines import AtomClassConditionalPipeline

            scheduler = build_scheduler(config.model)
            if isinstance(final, DiTTransformer2DModel):
                pipe = AtomClassConditionalPipeline(None, scheduler, transformer=final)
            else:
                pipe = AtomClassConditionalPipeline(final, scheduler)
            pipe.save_pretrained(tmp)
        else:  # DDPMPipeline's loop also steps a FlowMatchEulerDiscreteScheduler as it should
            DDPMPipeline(unet=final, scheduler=build_scheduler(config.model)).save_pretrained(tmp)
        if isinstance(separation, AtomSeparation):
            # A subfolder the stock loaders ignore; AtomSeparation.from_pretrained(target / "separation").
            copy.deepcopy(separation).cpu().save_pretrained(tmp / "separation")
            write_json(tmp / "separation" / SITE_FILE, {"site": site})  # where it was attached
    logger.info("saved %s", target)
