"""What :class:`~.denoiser_hook.DenoiserHook` reads off a pipeline and a denoiser call: the call
itself (:class:`DenoiserCall`), the halves of classifier-free guidance, the groups of samples that
share a conditioning, and the end of a sampling call; and two small services to the methods:
inference-mode clones and renamed keywords."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# The call arguments that carry a sample's conditioning; samples equal in all of them form one group.
CONDITIONING = ("class_labels", "encoder_hidden_states", "pooled_projections")

# The hooks that watch a pipeline's sampling calls end (:class:`RunWatch`).
_WATCHES: weakref.WeakKeyDictionary[Any, RunWatch] = weakref.WeakKeyDictionary()


# --- One denoiser call, as the hooks see it ---------------------------------------------------------


@dataclass
class DenoiserCall:
    """One call of the denoiser (N rows; N = 2B under classifier-free guidance).

    Attributes:
        args, kwargs: the call's arguments as the caller passed them; :meth:`get` and :meth:`replace`
            address them by parameter name, keeping each where the caller put it.
        names: the parameter names of the denoiser's ``forward``, in order.
        sample_name: the name of the latents argument (``"sample"`` for UNets, ``"hidden_states"``).
        fraction: ``τ`` per row, the position on the trajectory (1 = pure noise): ``t / (T − 1)``, or
            ``σ`` under flow matching (:func:`~.noise.noise_levels`).
        alpha, sigma: ``α_t`` and ``σ_t`` of ``z_t = α_t x_0 + σ_t ε`` per row (float64, on the CPU).
        doubled: whether the batch holds the two halves of classifier-free guidance (``[uncond, cond]``,
            or ``[cond, uncond]`` as diffusers' DiT pipeline orders them).
        guided: the rows a method acts on: the conditional half when doubled, else every row.
        groups: the group of each guided row, ``(len(guided),)`` integers from 0; batch-coupled methods
            act only between rows of one group. Set for methods with ``needs_batch``.
        acted: whether the method changed this call (counted in ``guided_calls``).
    """

    args: list[Any]
    kwargs: dict[str, Any]
    names: list[str]
    sample_name: str
    fraction: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    doubled: bool
    guided: slice
    groups: torch.Tensor | None = None
    acted: bool = True

    def get(self, name: str, default: Any = None) -> Any:
        """The argument ``name`` of this call, positional or keyword."""
        if name in self.kwargs:
            return self.kwargs[name]
        position = self.names.index(name) if name in self.names else len(self.args)
        return self.args[position] if position < len(self.args) else default

    def replace(self, name: str, value: Any) -> None:
        """Give the forward pass ``value`` for the argument ``name``, where the caller passed it."""
        position = self.names.index(name) if name in self.names else len(self.args)
        if name not in self.kwargs and position < len(self.args):
            self.args[position] = value
        else:
            self.kwargs[name] = value

    @property
    def sample(self) -> torch.Tensor:
        """The latents ``z_t`` as the denoiser receives them, ``(N, C, ...)``."""
        return self.get(self.sample_name)

    @property
    def unguided(self) -> slice | None:
        """The unconditional half's rows when the batch is doubled, else ``None``."""
        if not self.doubled:
            return None
        half = self.sample.shape[0] // 2
        return slice(half, None) if self.guided.start in (None, 0) else slice(None, half)

    def with_guided(self, full: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``full`` (one entry per row of the call) with its :attr:`guided` rows replaced by ``rows``."""
        start, stop, _ = self.guided.indices(full.shape[0])
        return torch.cat([full[:start], rows, full[stop:]])

    def per_row(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values`` (one per row) shaped to broadcast against ``like`` (same device and dtype)."""
        return values.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


# --- The halves of classifier-free guidance -----------------------------------------------------


def conditional_half(pipe: Any, call: DenoiserCall) -> slice | None:
    """The conditional half's rows when this call is the doubled batch of classifier-free guidance,
    else ``None``.

    The batch is doubled when the two halves of the latents are equal and the pipeline says it guides
    (Stable Diffusion pipelines have ``do_classifier_free_guidance``) or, for pipelines that do not say,
    the halves' prompts or class labels differ. The conditional half is the second (``[uncond, cond]``,
    as most pipelines order it), except where the class labels say otherwise: the unconditional half's
    labels are all the null label, the largest index (diffusers' ``DiTPipeline`` puts it second).
    """
    sample, rows = call.sample, call.sample.shape[0]
    half = rows // 2
    if rows < 2 or rows % 2 or not torch.equal(sample[:half], sample[half:]):
        return None
    first, second = slice(None, half), slice(half, None)
    labels = call.get("class_labels")
    if isinstance(labels, torch.Tensor) and labels.shape[:1] == (rows,):
        null = labels.max()
        if bool((labels[second] == null).all()) and not bool((labels[first] == null).all()):
            return first
        if not torch.equal(labels[first], labels[second]):
            return second
    try:
        says = getattr(pipe, "do_classifier_free_guidance", None)
    except AttributeError:  # the property reads state that __call__ sets
        says = None
    if says is not None:
        return second if says else None
    prompt = call.get("encoder_hidden_states")
    if isinstance(prompt, torch.Tensor) and prompt.shape[:1] == (rows,):
        return None if torch.equal(prompt[first], prompt[second]) else second
    return None


# --- Groups -------------------------------------------------------------------------------------


def conditioning_groups(call: DenoiserCall) -> torch.Tensor:
    """The group of each guided row: rows equal in every conditioning argument (class labels, prompt
    embeddings, pooled projections, SDXL's pooled ``text_embeds``) share a group; numbered in order of
    first appearance. A call without conditioning is one group."""
    rows = call.sample[call.guided].shape[0]
    keys = []
    added = call.get("added_cond_kwargs")
    values = [call.get(name) for name in CONDITIONING]
    if isinstance(added, dict):
        values.append(added.get("text_embeds"))
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == call.sample.shape[0]:
            keys.append(value[call.guided].detach().reshape(rows, -1).to("cpu", torch.float64))
    if not keys:
        return torch.zeros(rows, dtype=torch.long)
    _, inverse = torch.unique(torch.cat(keys, dim=1), dim=0, return_inverse=True)
    first = {}  # renumber by first appearance, so the numbers do not depend on the values' order
    return torch.tensor([first.setdefault(int(g), len(first)) for g in inverse], dtype=torch.long)


def check_group_labels(groups: Sequence[int] | torch.Tensor, owner: str) -> torch.Tensor:
    labels = torch.as_tensor(groups)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{owner}(groups=…) takes one integer group per sample (a list or a 1-d tensor); got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    return labels.long().cpu()


# --- Inference mode, deprecated keywords --------------------------------------------------------


def for_autograd(value: Any) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) usable by autograd: tensors created under
    ``torch.inference_mode()`` are cloned outside it (autograd cannot save inference tensors for
    backward); others are returned as they are. Call it under ``torch.inference_mode(False)``."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (tuple, list)):
        return type(value)(for_autograd(item) for item in value)
    if isinstance(value, dict):
        return {key: for_autograd(item) for key, item in value.items()}
    return value


def renamed(owner: str, old: str, new: str, value: Any, current: Any, default: Any = None) -> Any:
    """The value of keyword ``new`` when a caller passed the deprecated ``old`` (a ``FutureWarning``)."""
    if value is None:
        return current
    if current is not default:
        raise TypeError(f"{owner} got both {new}= and its deprecated alias {old}=; pass {new}= only")
    warnings.warn(
        f"{owner}({old}=…) is deprecated and will be removed in the next release; use {new}=…",
        FutureWarning,
        stacklevel=3,
    )
    return value


# --- The end of a sampling call -------------------------------------------------------------


class SamplingListener(Protocol):
    """What :class:`RunWatch` calls: :meth:`~.denoiser_hook.DenoiserHook.sampling_ended`."""

    def sampling_ended(self) -> None: ...


class RunWatch:
    """Tells the hooks on a pipeline when one of its sampling calls ends.

    Every diffusers pipeline (and every Atom pipeline) calls ``self.maybe_free_model_hooks()`` as the
    last step of ``__call__``; the watch shadows it with an instance attribute that calls the hooks'
    :meth:`SamplingListener.sampling_ended` first, and deletes the attribute when the last hook leaves.
    """

    def __init__(self, pipe: Any):
        self.hooks: list[SamplingListener] = []
        self.original = pipe.maybe_free_model_hooks

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for hook in list(self.hooks):
            hook.sampling_ended()
        return self.original(*args, **kwargs)

    @staticmethod
    def add(pipe: Any, hook: SamplingListener) -> None:
        if not callable(getattr(pipe, "maybe_free_model_hooks", None)):
            return
        try:
            watch = _WATCHES.get(pipe)
        except TypeError:  # not weak-referenceable: no watch
            return
        if watch is None:
            watch = _WATCHES[pipe] = RunWatch(pipe)
            pipe.maybe_free_model_hooks = watch
        watch.hooks.append(hook)

    @staticmethod
    def discard(pipe: Any, hook: SamplingListener) -> None:
        try:
            watch = _WATCHES.get(pipe)
        except TypeError:
            return
        if watch is None or hook not in watch.hooks:
            return
        watch.hooks.remove(hook)
        if not watch.hooks:
            del _WATCHES[pipe]
            if vars(pipe).get("maybe_free_model_hooks") is watch:
                del pipe.maybe_free_model_hooks


__all__ = [
    "CONDITIONING",
    "DenoiserCall",
    "RunWatch",
    "check_group_labels",
    "conditional_half",
    "conditioning_groups",
    "for_autograd",
    "renamed",
]
