"""The mechanism every sampling-time method here is installed with: :class:`DenoiserHook`.

It puts PyTorch forward hooks on a pipeline's denoiser (``pipe.unet``, or ``pipe.transformer``) and reads
each call as a :class:`DenoiserCall`: the latents ``z_t``, the timestep and its noise levels (from
:mod:`.noise`), the ``[uncond, cond]`` halves of classifier-free guidance, and the groups of samples that
share a conditioning. The denoiser stays the same object (its config, dtype and device are untouched) and
``remove()`` gives back the stock pipeline. The methods live one per file on top of it:
:mod:`.energy_guidance` (the correction shared by atom guidance and Particle Guidance),
:mod:`.atom_guidance`, :mod:`.feature_guidance`, :mod:`.particle_guidance`, :mod:`.cads`, and the
methods that edit the two halves of classifier-free guidance (:mod:`.cfg_edit`).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import nn

from .hook_utils import (
    CONDITIONING,
    DenoiserCall,
    RunWatch,
    check_group_labels,
    conditional_half,
    conditioning_groups,
    for_autograd,
    renamed,
)
from .noise import (
    DEFAULT_ACTIVE_RANGE,
    PREDICTION_TYPES,
    check_range,
    check_scheduler,
    flow_sigma,
    is_flow_matching,
    noise_levels,
    prediction_type,
)

logger = logging.getLogger(__name__)

DENOISER_NAMES = ("unet", "transformer")
DEFAULT_INTERVAL = DEFAULT_ACTIVE_RANGE  # the old name, kept for imports

# Every hook installed on a denoiser, so that a second hook of the same kind is refused.
_INSTALLED: weakref.WeakKeyDictionary[nn.Module, list[DenoiserHook]] = weakref.WeakKeyDictionary()


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """:func:`~.noise.check_range` under the old argument name ``interval``."""
    return check_range(interval, "interval")


# --- The hook every method installs on the denoiser -------------------------------------------------


class DenoiserHook:
    """Forward hooks on a pipeline's denoiser that see every call; the base of every sampling-time method.

    A method subclasses it and overrides, as it needs: :meth:`setup` (validate and prepare once),
    :meth:`is_enabled` (whether it can act at all), :meth:`before_forward` (decide whether it acts at this
    call, and change the call's arguments if it must) and, when it changes the model output,
    :meth:`after_forward`. The post-hook is registered with ``always_call=True``, so
    :meth:`after_forward` also runs (with ``output=None``) when the forward pass raises, and can clean up.
    State a method needs from one call to the next hook of the same call lives on the method, set in
    :meth:`before_forward` and cleared in :meth:`after_forward`.

    A method with ``needs_batch = True`` couples the samples of a batch; it acts only between samples
    of one group (:attr:`DenoiserCall.groups`) and refuses, with a clear error, a group of one sample.

    Every handle counts the calls it changed (:attr:`guided_calls`); when a sampling call of the
    pipeline ends with none changed, it logs a warning that says where the method acts.

    Args:
        pipe: a diffusers pipeline with a ``unet`` or ``transformer`` and a scheduler with a Gaussian
            noise path: variance-preserving (``alphas_cumprod``: DDPM, DDIM, PNDM, Euler, DPM-Solver…) or
            flow matching (``FlowMatchEulerDiscreteScheduler``: Stable Diffusion 3, Flux, Sana…).
        groups: batch-coupled methods only: the group of each sample of a sampling call (one integer per
            sample; under classifier-free guidance, per sample of the conditional half). ``None``: the
            samples that share their conditioning (prompt embedding, pooled projection, class label)
            form a group; unconditional sampling is one group.

    Attributes:
        guided_calls: the number of denoiser calls this handle changed since it was installed.
    """

    #: whether the method acts between the samples of a batch (and so needs two of them per group)
    needs_batch: bool = True

    def __init__(self, pipe: DiffusionPipeline, groups: Sequence[int] | torch.Tensor | None = None):
        self.pipe = pipe
        self.denoiser = _find_denoiser(pipe)
        self._names, self._sample_name = _forward_parameters(self.denoiser)
        check_scheduler(pipe.scheduler)
        self.groups = None if groups is None else check_group_labels(groups, type(self).__name__)
        installed = _INSTALLED.setdefault(self.denoiser, [])
        if any(type(hook) is type(self) for hook in installed):
            raise RuntimeError(
                f"{type(self).__name__} is already installed on this pipeline's denoiser; call .remove() "
                "on the earlier handle first"
            )
        self.guided_calls = 0
        self._run_calls, self._run_guided, self._run_fractions = 0, 0, []
        self._call: DenoiserCall | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.setup()
        installed.append(self)
        self._handles += [
            self.denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            self.denoiser.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True),
        ]
        RunWatch.add(pipe, self)

    def remove(self) -> None:
        """Uninstall: the pipeline is exactly the stock pipeline again. Safe to call twice.

        A handle removed inside a sampling call (a pipeline that installs a method for one call) ends
        its run here: it warns as :meth:`sampling_ended` does when it guided none of the run's calls."""
        if self._run_calls:
            self.sampling_ended()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        installed = _INSTALLED.get(self.denoiser, [])
        if self in installed:
            installed.remove(self)
        RunWatch.discard(self.pipe, self)

    def __enter__(self) -> DenoiserHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # What a method overrides: set up, and act on one call.
    def setup(self) -> None:
        """Validate and prepare what the method needs on ``self.denoiser``; extra hooks go in
        ``self._handles``, so that :meth:`remove` takes them off too."""

    def is_enabled(self) -> bool:
        """Whether the method can act at all; when not, the hooks return at once."""
        return True

    def before_forward(self, call: DenoiserCall) -> bool:
        """Return whether the method acts at this call; it may change the call's arguments
        (:meth:`DenoiserCall.replace`)."""
        raise NotImplementedError

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        """Clean up, and return a replacement for the denoiser's output (or ``None`` to keep it)."""
        return None

    def where(self) -> str:
        """Where the method acts, for the warning of a sampling call it left untouched."""
        return "at every call"

    def sampling_ended(self) -> None:
        """Called when a sampling call of the pipeline ends: warns when nothing was guided, and resets
        the per-run state (a subclass that keeps state across steps resets it here too)."""
        calls, guided, fractions = self._run_calls, self._run_guided, self._run_fractions
        self._run_calls, self._run_guided, self._run_fractions = 0, 0, []
        if calls and not guided and self.is_enabled():
            img2img = getattr(self.pipe, "strength", None)
            note = (
                "; an img2img pipeline starts at τ ≈ its `strength` argument: raise it, or widen the range"
                if img2img is not None or "Img2Img" in type(self.pipe).__name__
                else ""
            )
            logger.warning(
                "%r guided none of the %d denoiser calls of this sampling run: it acts %s, and the run "
                "sampled τ ∈ [%.3f, %.3f] (1 = pure noise)%s",
                self,
                calls,
                self.where(),
                min(fractions),
                max(fractions),
                note,
            )

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._call = None
        if not self.is_enabled():
            return None
        call = self._read_call(args, kwargs)
        if self.needs_batch:
            call.groups = self._check_groups(call)
        self._run_calls += 1
        self._run_fractions.append(float(call.fraction.max()))
        if not self.before_forward(call):
            return None
        self._call = call
        return tuple(call.args), call.kwargs

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call, self._call = self._call, None
        if call is None:
            return None
        result = self.after_forward(call, output)
        if output is not None and call.acted:
            self.guided_calls += 1
            self._run_guided += 1
        return result

    def _read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        call = DenoiserCall(
            args=list(args),
            kwargs=dict(kwargs),
            names=self._names,
            sample_name=self._sample_name,
            fraction=torch.empty(0),
            alpha=torch.empty(0),
            sigma=torch.empty(0),
            doubled=False,
            guided=slice(None),
        )
        sample, timestep = call.sample, call.get("timestep")
        if not isinstance(sample, torch.Tensor) or timestep is None:
            raise TypeError(
                f"{type(self).__name__} expects the denoiser to be called with latents "
                f"({self._sample_name!r}) and a timestep"
            )
        rows = sample.shape[0]
        t = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten()
        if t.numel() not in (1, rows):
            raise ValueError(f"timestep has {t.numel()} entries for a batch of {rows} latents")
        call.fraction, call.alpha, call.sigma = noise_levels(self.pipe.scheduler, t.expand(rows))
        conditional = conditional_half(self.pipe, call)
        call.doubled = conditional is not None
        call.guided = slice(None) if conditional is None else conditional
        return call

    def _check_groups(self, call: DenoiserCall) -> torch.Tensor:
        """The groups of the guided rows, each of at least two samples (else a clear error)."""
        rows = call.sample[call.guided].shape[0]
        if self.groups is not None:
            if self.groups.numel() != rows:
                raise ValueError(
                    f"{type(self).__name__} got groups= for {self.groups.numel()} samples, but the denoiser "
                    f"got {rows} samples{' per CFG half' if call.doubled else ''}; pass one group per sample"
                )
            groups = torch.unique(self.groups, return_inverse=True)[1]
        else:
            groups = conditioning_groups(call)
        counts = torch.bincount(groups)
        alone = [int(g) for g in (counts < 2).nonzero().flatten()]
        if alone:
            per = " per prompt (num_images_per_prompt)" if call.doubled else ""
            group = alone[0]
            members = (groups == group).nonzero().flatten().tolist()
            source = "groups=" if self.groups is not None else "its conditioning (prompt or class label)"
            raise ValueError(
                f"{type(self).__name__} separates the samples of a group, but group {group} of "
                f"{len(counts)} (sample{'s' if len(members) > 1 else ''} {members}, grouped by {source}) "
                f"got {int(counts[group])} sample: there is nothing to separate. Sample at least 2 "
                f"images{per} of every prompt or class, e.g. batch_size=4, or remove the guidance."
            )
        return groups.to(call.sample.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --- Helpers ------------------------------------------------------------------------------------


def _find_denoiser(pipe: Any) -> nn.Module:
    for name in DENOISER_NAMES:
        denoiser = getattr(pipe, name, None)
        if isinstance(denoiser, nn.Module):
            return denoiser
    components = sorted(getattr(pipe, "components", {}))
    raise TypeError(
        f"sampling-time guidance needs a pipeline with a denoiser named {' or '.join(DENOISER_NAMES)}; "
        f"{type(pipe).__name__} has none (components: {components})"
    )


def _forward_parameters(denoiser: nn.Module) -> tuple[list[str], str]:
    """The parameter names of the denoiser's ``forward`` and the name of its latents argument."""
    parameters = list(inspect.signature(type(denoiser).forward).parameters.values())[1:]  # without self
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    sample_name = next((name for name in ("sample", "hidden_states") if name in names), None)
    if sample_name is None or "timestep" not in names:
        raise TypeError(
            f"unsupported denoiser {type(denoiser).__name__}: its forward({', '.join(names)}) takes no "
            "'sample'/'hidden_states' latents and 'timestep'. Supported: diffusers UNets (UNet2DModel, "
            "UNet2DConditionModel) and transformer denoisers called with (hidden_states, timestep)"
        )
    return names, sample_name


def prediction_tensor(output: Any) -> torch.Tensor:
    """The prediction tensor of a denoiser output: a tensor, the first of a tuple, or ``.sample``."""
    prediction = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
    if not isinstance(prediction, torch.Tensor):
        raise TypeError(f"unsupported denoiser output {type(output).__name__}: no prediction tensor")
    return prediction


def add_to_prediction(output: Any, delta: torch.Tensor) -> Any:
    """The denoiser output with ``delta`` added to its prediction (learned-variance channels kept)."""
    prediction = prediction_tensor(output)
    channels, delta = delta.shape[1], delta.to(prediction.dtype)
    if prediction.shape == delta.shape:
        corrected = prediction + delta
    elif prediction.shape[1] == 2 * channels:  # learned variance: (prediction, variance) along channels
        corrected = torch.cat([prediction[:, :channels] + delta, prediction[:, channels:]], dim=1)
    else:
        raise RuntimeError(
            f"the denoiser's prediction {tuple(prediction.shape)} does not match its latents "
            f"{tuple(delta.shape)}"
        )
    if isinstance(output, torch.Tensor):
        return corrected
    if isinstance(output, tuple):
        return (corrected, *output[1:])
    output.sample = corrected
    return output


__all__ = [
    "CONDITIONING",
    "DEFAULT_INTERVAL",
    "PREDICTION_TYPES",
    "DenoiserCall",
    "DenoiserHook",
    "add_to_prediction",
    "check_interval",
    "conditioning_groups",
    "flow_sigma",
    "for_autograd",
    "is_flow_matching",
    "noise_levels",
    "prediction_tensor",
    "prediction_type",
    "renamed",
]
