"""What the demo does: :class:`DemoConfig`, the trained models and the methods of its table.

Every section of the demo (:mod:`.ddpm`, :mod:`.attribution`, :mod:`.cfg`, :mod:`.vae`) reads its sizes
from one :class:`DemoConfig` and resolves its training configs through :meth:`DemoConfig.experiment`;
this module imports none of them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..separation import MODES, AtomSeparation
from ..train.config import ExperimentConfig, apply_overrides, config_path

__all__ = ["DEFAULT_CONFIG", "LIBRARY_MODE", "METHODS", "MODELS", "DemoConfig", "Method", "batch_sizes"]

DEFAULT_CONFIG = "configs/digits-ddpm.yaml"  # the checkout's file from its root, else the packaged copy
LIBRARY_MODE = inspect.signature(AtomSeparation.__init__).parameters["mode"].default

# The trained models: name → separation.method.
MODELS = {"baseline": "none", "atom": "atom", "dispersive": "dispersive"}


@dataclass(frozen=True)
class Method:
    """One row of the table: which trained model is sampled, and how."""

    key: str  # file names, report.json
    label: str  # the table
    model: str  # a key of MODELS
    kind: str  # "training" or "sampling"


METHODS = (
    Method("baseline", "baseline", "baseline", "training"),
    Method("atom", "atom (training)", "atom", "training"),
    Method("dispersive", "dispersive (training)", "dispersive", "training"),
    Method("atom-guidance", "atom guidance (sampling)", "baseline", "sampling"),
    Method("particle-guidance", "particle guidance (sampling)", "baseline", "sampling"),
)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does; the defaults take about 10 minutes on 2 CPU cores (measured with one thread):
    about 8 for the five methods and the attribution, about 2 for the CFG section and 1 for the VAEs.

    Args:
        steps: training steps of each model (``train.steps``).
        num_samples: images sampled per method and seed.
        num_inference_steps: DDIM steps at sampling time.
        sample_batch_size: images per sampling batch; the guidance methods separate the samples *within*
            a batch, so this is their batch of atoms.
        seeds: how many seeds to repeat everything with (the table reports mean ± std over them).
        seed: the first seed; the others follow it.
        mode: the atom model's (and the atom VAE's) pair weights (method.md §4), ``"repulsive"`` or
            ``"signed"``; ``None`` keeps the library default (``"repulsive"``).
        atom_guidance: ``γ`` of atom guidance on the baseline model (:func:`~atomgen.pipelines.guide`).
        particle_guidance: ``γ`` of Particle Guidance on the baseline model.
        inception: score with FID Inception-v3 features instead of the digit classifier's.
        config: the base training config (YAML).
        overrides: ``key=value`` overrides of the base config, applied to all three trainings (and the
            CFG section's), except ``separation.options.*``: those are ``AtomSeparation`` keyword
            arguments, for the atom model. The VAE section trains from its own config
            (:data:`atomgen.demo.vae.BASE_CONFIG`, as it is) on the base config's data.
        cfg: run the classifier-free-guidance section (:mod:`atomgen.demo.cfg`, first seed only).
        cfg_steps: training steps of its class-conditional model.
        cfg_samples_per_class: images sampled per class and setting (the scores are per class, with 5
            neighbours); each class is sampled in batches of its own label.
        cfg_inference_steps: its DDIM steps.
        vae: run the VAE section (:mod:`atomgen.demo.vae`, first seed only).
        vae_steps: training steps of each of its two VAEs.
        vae_held_out: images of the dataset the VAEs do not train on; reconstruction error, KL and
            active units are measured on them.
        vae_samples: prior samples scored per VAE.
    """

    steps: int = 800
    num_samples: int = 512
    num_inference_steps: int = 50
    sample_batch_size: int = 128
    seeds: int = 1
    seed: int = 0
    mode: str | None = None
    # The strengths that won the digits sweep (bench/sweep.py): the most diversity at no worse fidelity,
    # or for Particle Guidance, which lost fidelity at every strength, the least loss.
    atom_guidance: float = 2.0
    particle_guidance: float = 0.1
    inception: bool = False
    config: str = DEFAULT_CONFIG
    overrides: tuple[str, ...] = ()
    cfg: bool = True
    cfg_steps: int = 500
    cfg_samples_per_class: int = 40
    cfg_inference_steps: int = 15
    vae: bool = True
    vae_steps: int = 200
    vae_held_out: int = 300
    vae_samples: int = 512

    def __post_init__(self) -> None:
        positive = ("steps", "num_inference_steps", "sample_batch_size", "seeds", "cfg_steps")
        positive += ("cfg_inference_steps", "vae_steps")
        counts = {  # name: (the least value, why)
            **dict.fromkeys(positive, (1, "")),
            **dict.fromkeys(("num_samples", "vae_samples"), (8, "precision and recall use 5 neighbours")),
            "cfg_samples_per_class": (6, "precision and recall within a class use 5 neighbours"),
            "vae_held_out": (2, "active units are a variance over the held-out images"),
        }
        for name, (least, why) in counts.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                wanted = "a positive integer" if least == 1 else f"an integer of at least {least} ({why})"
                raise ValueError(f"{name} must be {wanted}, got {value!r}")
        for name in ("cfg", "vae", "inception"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.sample_batch_size < 2:
            raise ValueError("sample_batch_size must be at least 2: guidance separates samples of a batch")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(
                f"mode must be one of {MODES} (or None for the library default), got {self.mode!r}"
            )
        for name in ("atom_guidance", "particle_guidance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if not isinstance(self.config, str | Path):
            raise ValueError(f"config must be the path of a YAML file, got {self.config!r}")
        if isinstance(self.overrides, str) or not all(isinstance(o, str) for o in self.overrides):
            raise ValueError(f"overrides must be a sequence of 'key=value' strings, got {self.overrides!r}")
        object.__setattr__(self, "config", str(self.config))
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A smoke-test size, about 3 minutes on 2 CPU cores, about 40 s of it the CFG section and 30 s the
        VAE section (the samples are blurry digits at best)."""
        sizes = {
            "steps": 150,
            "num_samples": 256,
            "num_inference_steps": 20,
            "cfg_steps": 150,
            "cfg_samples_per_class": 20,
            "cfg_inference_steps": 10,
            "vae_steps": 100,
            "vae_samples": 256,
        }
        return cls(**{**sizes, **overrides})

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def strength(self, method: Method) -> float | None:
        """The guidance strength a sampling-time method uses (``None`` for the trained models)."""
        return {"atom-guidance": self.atom_guidance, "particle-guidance": self.particle_guidance}.get(
            method.key
        )

    def experiment(
        self,
        model: str,
        seed: int,
        out: Path,
        *,
        steps: int | None = None,
        extra: Sequence[str] = (),
        base: str | None = None,
    ) -> ExperimentConfig:
        """The resolved training config of one model and seed (raises ``ConfigError`` for a bad one).

        Args:
            model: a key of :data:`MODELS`, or the name of another run (plain, unless ``extra`` says
                otherwise); the run's directory is ``<out>/seed-<seed>/<model>``.
            seed: ``train.seed``.
            out: the demo's run directory.
            steps: ``train.steps``; ``None`` for :attr:`steps`.
            extra: overrides applied last (the CFG section's class-conditional model).
            base: another base config, used without :attr:`overrides` (they are for :attr:`config`):
                the VAE section's.
        """
        values = yaml.safe_load(config_path(base or self.config).read_text()) or {}
        if base is None:
            values = apply_overrides(values, self.overrides)
        steps = self.steps if steps is None else steps
        warmup = values.get("train", {}).get("lr_warmup_steps", 100)
        demo = [
            f"separation.method={MODELS.get(model, 'none')}",
            f"train.steps={steps}",
            f"train.seed={seed}",
            f"train.output_dir={out / f'seed-{seed}' / model}",
            f"train.lr_warmup_steps={min(warmup, steps // 10)}",  # a short run keeps its warm-up short
            f"train.checkpoint_every={steps}",  # one checkpoint, at the end
            "train.keep_checkpoints=1",
            *extra,
        ]
        if model == "atom" and self.mode is not None:
            demo.append(f"separation.options.mode={self.mode}")
        if model != "atom":  # options of AtomSeparation mean nothing to the other models
            values.get("separation", {}).pop("options", None)
        return ExperimentConfig.from_dict(apply_overrides(values, demo))


def batch_sizes(total: int, batch: int) -> list[int]:
    """``total`` images split into near-equal batches of at most ``batch`` (``sample_batch_size``): never a
    batch of one, which a guidance that separates the samples of a batch could not guide."""
    count = math.ceil(total / batch)
    return [total // count + (i < total % count) for i in range(count)]
