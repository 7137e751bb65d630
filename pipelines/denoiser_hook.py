"""The mechanism every sampling-time method here is installed with: :class:`DenoiserHook`.

It puts PyTorch forward hooks on a pipeline's denoiser (``pipe.unet``, or ``pipe.transformer``) and reads
each call as a :class:`DenoiserCall`: the latents ``z_t``, the timestep and its noise levels, and the
``[uncond, cond]`` halves of classifier-free guidance. The denoiser stays the same object (its config,
dtype and device are untouched) and ``remove()`` gives back the stock pipeline. The methods live one per
file on top of it: :mod:`.energy_guidance` (the correction shared by atom guidance and Particle
Guidance), :mod:`.guidance`, :mod:`.particle_guidance`, :mod:`.cads`.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
DENOISER_NAMES = ("unet", "transformer")
DEFAULT_INTERVAL = (0.4, 1.0)  # the noisier 60 % of the trajectory: diversity is decided early

# Every hook installed on a denoiser, so that a second hook of the same kind is refused.
_INSTALLED: weakref.WeakKeyDictionary[nn.Module, list[DenoiserHook]] = weakref.WeakKeyDictionary()


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
            ``σ`` under flow matching (:func:`noise_levels`).
        alpha, sigma: ``α_t`` and ``σ_t`` of ``z_t = α_t x_0 + σ_t ε`` per row (float64, on the CPU).
        doubled: whether the batch holds the two halves of classifier-free guidance (``[uncond, cond]``,
            or ``[cond, uncond]`` as diffusers' DiT pipeline orders them).
        guided: the rows a method acts on: the conditional half when doubled, else every row.
        strength: ``γ(t)`` per guided row (energy guidance).
        energy_grad: ``∇_{z_t} E`` for the guided rows, once computed (energy guidance).
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
    strength: torch.Tensor | None = None
    energy_grad: torch.Tensor | None = None

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

    def with_guided(self, full: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``full`` (one entry per row of the call) with its :attr:`guided` rows replaced by ``rows``."""
        start, stop, _ = self.guided.indices(full.shape[0])
        return torch.cat([full[:start], rows, full[stop:]])

    def per_row(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values`` (one per row) shaped to broadcast against ``like`` (same device and dtype)."""
        return values.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


# --- The hook every method installs on the denoiser -------------------------------------------------


class DenoiserHook:
    """Forward hooks on a pipeline's denoiser that see every call; the base of guidance and CADS.

    A method subclasses it and overrides, as it needs: :meth:`setup` (validate and prepare once),
    :meth:`is_enabled` (whether it can act at all), :meth:`before_forward` (decide whether it acts at this
    call, and change the call's arguments if it must) and, when it changes the model output,
    :meth:`after_forward`. The post-hook is registered with ``always_call=True``, so
    :meth:`after_forward` also runs (with ``output=None``) when the forward pass raises, and can clean up.
    A method with ``needs_batch = True`` is refused, with a clear error, a batch of one sample.

    Args:
        pipe: a diffusers pipeline with a ``unet`` or ``transformer`` and a scheduler with a Gaussian
            noise path: variance-preserving (``alphas_cumprod``: DDPM, DDIM, PNDM, Euler, DPM-Solver…) or
            flow matching (``FlowMatchEulerDiscreteScheduler``: Stable Diffusion 3, Flux, Sana…).
    """

    #: whether the method acts between the samples of a batch (and so needs two of them)
    needs_batch: bool = True

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe
        self.denoiser = _find_denoiser(pipe)
        self._names, self._sample_name = _forward_parameters(self.denoiser)
        _check_scheduler(pipe.scheduler)
        installed = _INSTALLED.setdefault(self.denoiser, [])
        if any(type(hook) is type(self) for hook in installed):
            raise RuntimeError(
                f"{type(self).__name__} is already installed on this pipeline's denoiser; call .remove() "
                "on the earlier handle first"
            )
        self._call: DenoiserCall | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.setup()
        installed.append(self)
        self._handles += [
            self.denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            self.denoiser.register_forward_hook(self._post_hook, with_kwargs=True, always_call=True),
        ]

    def remove(self) -> None:
        """Uninstall: the pipeline is exactly the stock pipeline again. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        installed = _INSTALLED.get(self.denoiser, [])
        if self in installed:
            installed.remove(self)

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

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._call = None
        if not self.is_enabled():
            return None
        call = self._read_call(args, kwargs)
        if self.needs_batch:
            self._check_batch(call)
        if not self.before_forward(call):
            return None
        self._call = call
        return tuple(call.args), call.kwargs

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call, self._call = self._call, None
        if call is None:
            return None
        return self.after_forward(call, output)

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
        conditional = _conditional_half(self.pipe, call)
        call.doubled = conditional is not None
        call.guided = slice(None) if conditional is None else conditional
        return call

    def _check_batch(self, call: DenoiserCall) -> None:
        guided = call.sample[call.guided].shape[0]
        if self.needs_batch and guided < 2:
            per = " per prompt (num_images_per_prompt)" if call.doubled else ""
            raise ValueError(
                f"{type(self).__name__} separates the samples of a batch, but the denoiser got {guided} "
                f"sample{per}: there is nothing to separate. Sample at least 2 images{per}, e.g. "
                "batch_size=4, or remove the guidance."
            )


# --- Helpers ------------------------------------------------------------------------------------


def noise_levels(scheduler: Any, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(τ, α_t, σ_t)`` of the Gaussian path ``z_t = α_t x_0 + σ_t ε`` at the denoiser's timesteps ``t``.

    ``τ`` is the position on the trajectory (1 = pure noise). Variance-preserving schedulers
    (``alphas_cumprod``): ``τ = t / (T − 1)``, and fractional timesteps (Euler-type schedulers)
    interpolate ``σ_t / α_t = √((1 − ᾱ_t) / ᾱ_t)`` linearly in ``t``, as those schedulers do. Flow
    matching (rectified flow, :func:`is_flow_matching`): ``z_σ = (1 − σ) x_0 + σ ε``, so ``α = 1 − σ``
    and ``τ = σ``, read from the timestep by :func:`flow_sigma`. float64, on the CPU.
    """
    if is_flow_matching(scheduler):
        sigma = flow_sigma(scheduler, timestep)
        return sigma, 1.0 - sigma, sigma
    alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    last = alphas_cumprod.numel() - 1
    ratios = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()  # σ_t / α_t
    t = timestep.to(torch.float64).clamp(0, last)
    low = t.floor().long()
    ratio = torch.lerp(ratios[low], ratios[(low + 1).clamp_max(last)], t - low)
    alpha = (1.0 + ratio.square()).rsqrt()
    return t / last, alpha, ratio * alpha


def is_flow_matching(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples a rectified flow: diffusers' ``FlowMatch*`` schedulers, and the
    multistep solvers configured for it (``prediction_type="flow_prediction"``, as Sana's)."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return True
    return getattr(scheduler.config, "prediction_type", None) == "flow_prediction"


def flow_sigma(scheduler: Any, timestep: torch.Tensor) -> torch.Tensor:
    """``σ`` of a flow-matching denoiser call from its timestep, float64 on the CPU.

    Flow schedulers hold ``timesteps = σ · T`` (``T = num_train_timesteps``). Most pipelines pass that to
    the denoiser (Stable Diffusion 3, Sana); Flux, Qwen-Image and others pass ``σ`` itself
    (``timestep / 1000``) and the transformer scales it back. Which of the two a call used is read off
    the scheduler's current timesteps: the reading under which ``t`` lies closer to one of them.
    """
    train_steps = float(scheduler.config.num_train_timesteps)
    t = timestep.detach().to("cpu", torch.float64).flatten()
    steps = getattr(scheduler, "timesteps", None)
    if isinstance(steps, torch.Tensor) and steps.numel():
        steps = steps.detach().to("cpu", torch.float64).flatten()
        as_steps = (t[:, None] - steps).abs().amin(dim=1)
        as_sigma = (t[:, None] * train_steps - steps).abs().amin(dim=1)
        is_sigma = as_sigma < as_steps
    else:  # no sampling loop has set the timesteps: a timestep above 1 cannot be a σ
        is_sigma = t <= 1.0
    return torch.where(is_sigma, t, t / train_steps).clamp(0.0, 1.0)


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


def _check_scheduler(scheduler: Any) -> None:
    if not is_flow_matching(scheduler) and not isinstance(
        getattr(scheduler, "alphas_cumprod", None), torch.Tensor
    ):
        raise TypeError(
            f"sampling-time guidance needs a scheduler with a Gaussian noise path: a variance-preserving "
            f"one (alphas_cumprod: DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler…) or flow "
            f"matching (FlowMatchEulerDiscreteScheduler…); got {type(scheduler).__name__}"
        )
    prediction_type(scheduler)


def prediction_type(scheduler: Any) -> str:
    """What the denoiser predicts: one of :data:`PREDICTION_TYPES` (``"flow"``: the velocity
    ``v = ε − x_0`` of a rectified flow, whatever the scheduler calls it)."""
    if is_flow_matching(scheduler):
        return "flow"
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"{type(scheduler).__name__} has prediction_type={prediction_type!r}; guidance supports "
            f"{PREDICTION_TYPES}"
        )
    return prediction_type


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (t_lo, t_hi), got {interval!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(
            f"interval must satisfy 0 ≤ t_lo < t_hi ≤ 1 (fractions of the trajectory, 1 = pure noise); "
            f"got {interval!r}"
        )
    return low, high


def _conditional_half(pipe: Any, call: DenoiserCall) -> slice | None:
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
    "DEFAULT_INTERVAL",
    "PREDICTION_TYPES",
    "DenoiserCall",
    "DenoiserHook",
    "add_to_prediction",
    "check_interval",
    "flow_sigma",
    "is_flow_matching",
    "noise_levels",
    "prediction_tensor",
    "prediction_type",
]
