"""How ``atomgen sample`` calls any diffusers pipeline for one batch: its conditioning and its noise.

A pipeline's kind is read from its ``__call__``: ``prompt`` (Stable Diffusion, SD3, Flux, PixArt),
``class_labels`` with a class count (``DiTPipeline``, ``AtomClassConditionalPipeline``, a class UNet),
or ``batch_size`` alone (``DDPMPipeline``, ``DDIMPipeline``, the Atom UNet pipelines).

Noise: a batch's initial noise comes from ``generator(seed, "initial-noise", batch)`` and the noise
the sampler adds along the way from ``generator(seed, "step-noise", batch)`` (``atomgen.seeding``), so
the initial noise of a batch is the same at any number of steps. Pipelines that draw their initial
noise in ``__call__`` itself rather than through ``prepare_latents`` (``DDPMPipeline``,
``DDIMPipeline``, ``DiTPipeline``) are handed the initial-noise generator, whose later draws are then
their step noise. The global RNG is seeded per batch too (``"global-noise"``), for methods and
schedulers that draw from it (CADS without a generator; ``DiTPipeline``'s scheduler step).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DiffusionPipeline

from atomgen.seeding import generator, stream_seed

from .plan import Batch, Conditioning, balanced_counts

Kind = Literal["unconditional", "class", "prompt"]
# The call's arguments that atomgen sets itself, and the option that sets each (empty: none).
RESERVED = {
    "prompt": "--prompts",
    "class_labels": "--class-labels",
    "num_images_per_prompt": "--per-prompt",
    "batch_size": "--batch-size",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance-scale",
    "generator": "--seed",
    "latents": "--seed",
    "output_type": "",
    "return_dict": "",
}


def class_count(pipe: DiffusionPipeline) -> int | None:
    """The number of classes of a class-conditional pipeline, ``None`` for any other pipeline."""
    if "class_labels" not in _parameters(pipe):
        return None
    count = getattr(pipe, "num_classes", None)  # AtomClassConditionalPipeline
    if isinstance(count, int):
        return count
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and transformer.config.get("num_embeds_ada_norm"):  # DiTPipeline
        return int(transformer.config.num_embeds_ada_norm)
    unet = getattr(pipe, "unet", None)
    if unet is not None and getattr(unet, "class_embedding", None) is not None:
        return int(unet.config.num_class_embeds)
    return None


@dataclass(frozen=True)
class PipelineCall:
    """The options of every call to one pipeline, and what each batch adds to them.

    Attributes:
        pipeline: the pipeline's class name, for messages.
        kind: how the pipeline is conditioned.
        num_classes: the class count of a class-conditional pipeline.
        options: ``num_inference_steps`` and ``guidance_scale`` as given (the pipeline's defaults
            otherwise), the extra keyword arguments given (e.g. DDIM's ``eta``), ``output_type="np"``.
        prepares_latents: whether the pipeline draws its initial noise through ``prepare_latents``.
        takes_batch_size: whether ``__call__`` takes ``batch_size`` (beside class labels, too).
    """

    pipeline: str
    kind: Kind
    num_classes: int | None
    options: dict[str, Any] = field(default_factory=dict)
    prepares_latents: bool = False
    takes_batch_size: bool = False

    @classmethod
    def of(
        cls,
        pipe: DiffusionPipeline,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> PipelineCall:
        """Read ``pipe``'s kind, and check that it takes the options given.

        Args:
            pipe: the pipeline.
            steps: ``num_inference_steps`` (``None``: the pipeline's default).
            guidance_scale: ``guidance_scale`` (``None``: the pipeline's default).
            extra: more keyword arguments of every call, e.g. ``{"eta": 1.0}`` (``--call-option``); not
                those atomgen sets itself (the conditioning, the noise, the steps, the scale, the output).
        """
        name = type(pipe).__name__
        parameters = _parameters(pipe)
        num_classes = class_count(pipe)
        if "prompt" in parameters:
            kind: Kind = "prompt"
        elif num_classes is not None:
            kind = "class"
        elif "batch_size" in parameters:
            kind = "unconditional"
        else:
            raise ValueError(
                f"{name}.__call__ takes neither prompt, nor class_labels, nor batch_size: atomgen sample "
                "cannot tell how to ask it for a batch of images"
            )
        options: dict[str, Any] = {"output_type": "np"}
        for option, value, flag in (
            ("num_inference_steps", steps, "--steps"),
            ("guidance_scale", guidance_scale, "--guidance-scale"),
        ):
            if option in parameters:
                default = parameters[option].default
                options[option] = value if value is not None else default
            elif value is not None:
                raise ValueError(f"{name} takes no {option}: leave out {flag}")
        for option, value in (extra or {}).items():
            if option in RESERVED:
                raise ValueError(
                    f"--call-option {option}: atomgen sets {option} itself"
                    + (f" (use {RESERVED[option]})" if RESERVED[option] else "")
                )
            if option not in parameters:
                raise ValueError(
                    f"--call-option {option}: {name}.__call__ takes no {option!r}; it takes "
                    f"{', '.join(sorted(p for p in parameters if p not in RESERVED and p != 'self'))}"
                )
            options[option] = value
        prepares = "generator" in _parameters(pipe, "prepare_latents")
        return cls(name, kind, num_classes, options, prepares, "batch_size" in parameters)

    # --- the conditionings a run asks for ----------------------------------------------------------

    def conditionings(
        self,
        num_samples: int | None,
        *,
        class_labels: Sequence[int] | None = None,
        prompts: Sequence[str] | None = None,
        per_prompt: int | None = None,
    ) -> list[tuple[Conditioning, int]]:
        """``(conditioning, count)`` pairs for the run, checked against the pipeline's kind.

        Args:
            num_samples: the number of images (with prompts, optional when ``per_prompt`` is given).
            class_labels: the classes to spread the images over evenly; ``None``: every class.
            prompts: the prompts (prompt pipelines only).
            per_prompt: images per prompt; ``None`` spreads ``num_samples`` over the prompts evenly.
        """
        name = self.pipeline
        if self.kind != "class" and class_labels is not None:
            raise ValueError(
                f"{name} is not class-conditional (it takes {self._takes()}): leave out --class-labels"
            )
        if self.kind != "prompt" and (prompts is not None or per_prompt is not None):
            raise ValueError(
                f"{name} takes no prompts (it takes {self._takes()}): leave out --prompts and --per-prompt"
            )
        if self.kind == "prompt":
            return self._prompt_counts(num_samples, prompts, per_prompt)
        if num_samples is None or num_samples < 1:
            raise ValueError(f"--num-samples must be a positive integer, got {num_samples!r}")
        if self.kind == "unconditional":
            return [(None, num_samples)]
        assert self.num_classes is not None
        labels = list(range(self.num_classes)) if class_labels is None else list(class_labels)
        if not labels:
            raise ValueError("--class-labels is empty: name at least one class, or leave it out for all")
        bad = sorted({label for label in labels if not 0 <= label < self.num_classes})
        if bad:
            raise ValueError(
                f"class labels {bad} are out of range: {name} has {self.num_classes} classes, "
                f"0…{self.num_classes - 1}"
            )
        if len(set(labels)) != len(labels):
            raise ValueError(f"--class-labels names a class twice: {labels}")
        return list(zip(labels, balanced_counts(num_samples, len(labels)), strict=True))

    def _prompt_counts(
        self, num_samples: int | None, prompts: Sequence[str] | None, per_prompt: int | None
    ) -> list[tuple[Conditioning, int]]:
        if not prompts:
            raise ValueError(
                f"{self.pipeline} is conditioned on text: pass --prompts FILE (one prompt a line)"
                + ("; the file has no prompt" if prompts is not None else "")
            )
        if per_prompt is not None and per_prompt < 1:
            raise ValueError(f"--per-prompt must be a positive integer, got {per_prompt}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"--num-samples must be a positive integer, got {num_samples!r}")
        if per_prompt is None:
            if num_samples is None:
                raise ValueError("with --prompts, give --per-prompt K or --num-samples N")
            return list(zip(prompts, balanced_counts(num_samples, len(prompts)), strict=True))
        if num_samples is not None and num_samples != per_prompt * len(prompts):
            raise ValueError(
                f"--num-samples {num_samples} is not {len(prompts)} prompts × --per-prompt {per_prompt} "
                f"= {per_prompt * len(prompts)}: give one of the two"
            )
        return [(prompt, per_prompt) for prompt in prompts]

    def _takes(self) -> str:
        return {"unconditional": "batch_size", "class": "class_labels", "prompt": "prompts"}[self.kind]

    # --- one batch --------------------------------------------------------------------------------

    def arguments(self, batch: Batch) -> dict[str, Any]:
        """The keyword arguments of ``pipe(...)`` for ``batch``, besides the generator."""
        arguments = dict(self.options)
        if self.kind == "prompt":
            counts = {count for _, count in batch.runs}
            assert len(counts) == 1, "plan_batches packs runs of equal counts only"
            arguments["prompt"] = [prompt for prompt, _ in batch.runs]
            arguments["num_images_per_prompt"] = counts.pop()
            return arguments
        if self.kind == "class":
            arguments["class_labels"] = batch.per_image
        if self.takes_batch_size:
            arguments["batch_size"] = batch.size
        return arguments

    def __call__(self, pipe: DiffusionPipeline, batch: Batch, seed: int) -> np.ndarray:
        """The batch's images, ``(n, H, W, C)`` floats in ``[0, 1]``: a function of ``seed``, the batch
        (its index and conditionings) and the options only."""
        initial = generator(seed, "initial-noise", batch.index)
        step = generator(seed, "step-noise", batch.index) if self.prepares_latents else initial
        device = torch.device(pipe._execution_device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _initial_noise(pipe, initial, self.prepares_latents):
            torch.manual_seed(stream_seed(seed, "global-noise", batch.index))
            images = pipe(**self.arguments(batch), generator=step).images
        images = np.asarray(images, dtype=np.float32)
        if images.shape[0] != batch.size:
            raise RuntimeError(f"{self.pipeline} returned {images.shape[0]} images for {batch.size} asked")
        return images


@contextlib.contextmanager
def _initial_noise(pipe: DiffusionPipeline, initial: torch.Generator, active: bool) -> Iterator[None]:
    """Within: ``pipe.prepare_latents`` draws from ``initial`` whatever generator the call hands it."""
    if not active:
        yield
        return
    prepare = pipe.prepare_latents
    signature = inspect.signature(prepare)

    def prepare_latents(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["generator"] = initial
        return prepare(*bound.args, **bound.kwargs)

    pipe.prepare_latents = prepare_latents  # an instance attribute: shadows the method for this call only
    try:
        yield
    finally:
        del pipe.prepare_latents


def _parameters(pipe: DiffusionPipeline, method: str = "__call__") -> dict[str, inspect.Parameter]:
    function = getattr(pipe, method, None)
    return dict(inspect.signature(function).parameters) if callable(function) else {}


__all__ = ["Kind", "PipelineCall", "class_count"]
