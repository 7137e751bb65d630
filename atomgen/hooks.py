"""Attach a separation loss to any module of a diffusers model, and detach it again.

``attach`` registers a forward hook at a dotted module path (``"mid_block"``, ``"down_blocks.1"``,
``"transformer_blocks.3"``, ``"encoder"``). The hook only *captures* the site's output — it never changes
what the model returns — and the loss is computed when asked for (``handle.loss()``, ``handle.output``),
so sampling with an attached model costs nothing extra.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Protocol

import torch
from torch import nn

logger = logging.getLogger(__name__)


class SeparationOutput(Protocol):
    loss: torch.Tensor


class AttachHandle:
    """What :func:`attach` returns: the loss of the last forward pass, and the way back to the stock model.

    Attributes:
        site: the dotted module path the module is attached to.
        module: the separation module (``AtomSeparation``, ``DispersiveLoss`` or any module of the same form).
        weight: ``λ``, the factor :meth:`loss` applies.
        step: how many forward passes have gone through the site since ``attach``.
        groups: ``(B,)`` integer group of each sample of the next loss (a class label, say), passed to the
            module so that only samples of the same group interact; ``None`` (default): the batch is
            one group. Set it before the loss of a forward pass is read.
    """

    def __init__(
        self, model: nn.Module, site: str, module: nn.Module | None, weight: float, capture: nn.Module
    ):
        self.model, self.site, self.module, self.weight = model, site, module, weight
        self.step = 0
        self.groups: torch.Tensor | None = None
        self._split_moments = _is_vae_encoder(model, site)
        self._features: torch.Tensor | None = None
        self._output: SeparationOutput | None = None
        self._hook = capture.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        _check_vae_batching(self.model, self.site)
        self.step += 1
        features = pick_features(output, self.site, module)
        if self._split_moments:  # AutoencoderKL: (mean, log-variance) along channels; separate the mean
            features = features.chunk(2, dim=1)[0]
        self._features, self._output = features, None

    @property
    def features(self) -> torch.Tensor:
        """The site activations captured by the last forward pass (the posterior mean for a VAE encoder)."""
        if self._features is None:
            raise RuntimeError(
                f"no forward pass has gone through {self.site!r} since attach; run the model first"
            )
        return self._features

    @property
    def output(self) -> SeparationOutput:
        """The separation module's output for the last forward pass through the site (computed once)."""
        if self._output is None:
            if self.module is None:
                raise RuntimeError(f"the handle at {self.site!r} only captures features (module=None)")
            self._output = self._run(self.features)
        return self._output

    def loss(self) -> torch.Tensor:
        """``weight · L`` for the last forward pass; add it to the task loss."""
        return self.weight * self.output.loss

    def remove(self) -> None:
        """Detach: the model is exactly the stock model again (the last output stays readable)."""
        self._hook.remove()

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _run(self, features: torch.Tensor) -> SeparationOutput:
        reference = next(self.module.parameters(), None)
        if reference is None:
            reference = next(self.module.buffers(), None)
        if reference is not None and reference.device != features.device:
            self.module.to(features.device)
        try:
            if self.groups is None:
                return self.module(features)
            return self.module(features, groups=self.groups)
        except FloatingPointError as error:
            raise FloatingPointError(f"site {self.site!r}, forward pass {self.step}: {error}") from None
        except ValueError as error:
            raise ValueError(f"site {self.site!r}: {error}") from None

    def __repr__(self) -> str:
        name = type(self.module).__name__ if self.module is not None else None
        return f"AttachHandle(site={self.site!r}, module={name}, weight={self.weight})"


def attach(model: nn.Module, site: str, module: nn.Module | None, weight: float = 1.0) -> AttachHandle:
    """Attach a separation loss to the output of ``model``'s submodule at ``site``.

    Args:
        model: a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, a transformer denoiser,
            ``AutoencoderKL``) or any ``nn.Module``.
        site: dotted module path, e.g. ``"mid_block"`` or ``"transformer_blocks.0"``. On an
            ``AutoencoderKL``, ``"encoder"`` means the posterior moments, and the loss acts on the mean.
        module: the loss, e.g. ``AtomSeparation(dim=...)`` or ``DispersiveLoss()``; ``None`` only
            captures the site's activations (``handle.features``).
        weight: ``λ ≥ 0``; :meth:`AttachHandle.loss` returns ``λ · L``.

    Returns:
        An :class:`AttachHandle` (also a context manager that removes itself on exit).

    Example:
        >>> import torch, atomgen
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
        ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> with atomgen.attach(unet, "mid_block", atomgen.AtomSeparation(dim=16), weight=0.1) as handle:
        ...     pred = unet(torch.randn(4, 3, 8, 8), 10).sample
        ...     loss = pred.square().mean() + handle.loss()
        >>> handle.output.importance.shape
        torch.Size([4, 16])
    """
    if not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"weight must be a number ≥ 0, got {weight!r}")
    if module is not None and not callable(module):
        raise TypeError(f"module must be a callable nn.Module returning an output with .loss, got {module!r}")
    capture = resolve_site(model, site)
    if _is_vae_encoder(model, site):
        _check_vae_batching(model, site)
        # The posterior moments leave the encoder through quant_conv when the VAE has one.
        if getattr(model, "quant_conv", None) is not None:
            capture = model.quant_conv
    return AttachHandle(model, site, module, float(weight), capture)


def resolve_site(model: nn.Module, site: str) -> nn.Module:
    """The submodule at a dotted path, with an error that lists the valid names nearby."""
    if not isinstance(site, str) or not site:
        raise ValueError(f"site must be a dotted module path such as 'mid_block', got {site!r}")
    target: Any = model
    walked: list[str] = []
    for part in site.split("."):
        parent = target
        if isinstance(parent, nn.Module) and part in parent._modules:
            target = parent._modules[part]
        else:
            target = getattr(parent, part, _MISSING) if not part.isdigit() else _MISSING
        if target is _MISSING:
            where = ".".join(walked) or type(model).__name__
            children = [n for n, _ in parent.named_children()] if isinstance(parent, nn.Module) else []
            names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(site, names, n=5, cutoff=0.5)
            hint = f" Close matches: {close}." if close else ""
            raise ValueError(
                f"{type(model).__name__} has no module {site!r}: {where!r} has no child {part!r}; its "
                f"children are {children}.{hint}"
            )
        if target is None:
            raise ValueError(
                f"{type(model).__name__}.{site} is None: this model was built without it (for a UNet, "
                f"mid_block_type=None). Attach to another site, e.g. one of "
                f"{[n for n, _ in model.named_children()]}"
            )
        walked.append(part)
    if not isinstance(target, nn.Module):
        raise ValueError(f"{type(model).__name__}.{site} is a {type(target).__name__}, not an nn.Module")
    if isinstance(target, (nn.ModuleList, nn.ModuleDict)):  # a container is never called itself
        choices = [f"{site}.{name}" for name in target._modules]
        shown = choices if len(choices) <= 6 else [*choices[:3], "…", *choices[-2:]]
        raise ValueError(
            f"{type(model).__name__}.{site} is a list of {len(choices)} blocks, which is never called "
            f"itself: choose one of them, e.g. {', '.join(shown)}"
        )
    return target


# Dual-stream transformer blocks return (text tokens, image tokens); separation acts on the image tokens.
IMAGE_TOKENS_AT = {"JointTransformerBlock": 1, "FluxTransformerBlock": 1, "FluxSingleTransformerBlock": 1}


def pick_features(output: Any, site: str, module: nn.Module | None = None) -> torch.Tensor:
    """The activation tensor of a site's output: a tensor, ``.sample``, or of a tuple the first tensor,
    except for the dual-stream transformer blocks of :data:`IMAGE_TOKENS_AT` (Stable Diffusion 3, Flux),
    whose image tokens are taken (not the text tokens)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        position = IMAGE_TOKENS_AT.get(type(module).__name__)
        if position is not None and isinstance(output[position], torch.Tensor):
            return output[position]
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"site {site!r} returned {type(output).__name__}, which holds no activation tensor")


def _is_vae_encoder(model: nn.Module, site: str) -> bool:
    from diffusers import AutoencoderKL

    return isinstance(model, AutoencoderKL) and site == "encoder"


def _check_vae_batching(model: nn.Module, site: str) -> None:
    """Sliced or tiled VAE encoding splits the batch, so the loss would see a fraction of it."""
    for flag, disable in (("use_slicing", "disable_slicing"), ("use_tiling", "disable_tiling")):
        if getattr(model, flag, False):
            raise RuntimeError(
                f"{type(model).__name__} has {flag}=True: it encodes the batch in pieces, so the "
                f"separation loss at {site!r} would only see part of it. Call vae.{disable}() while "
                "training with a separation loss."
            )


_MISSING = object()
