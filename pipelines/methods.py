"""The registry of sampling-time methods, by name: ``NAME[:SCALE][,KEY=VALUE...]`` strings.

    >>> from atomgen.pipelines.methods import METHODS, parse_method
    >>> sorted(METHODS)
    ['apg', 'atom', 'atom-feature', 'atom-sparse', 'autoguidance', 'cads', 'interval', 'pg']
    >>> parse_method("atom:0.2,active_range=[0.2, 1.0]")
    MethodSpec(name='atom', scale=0.2, options={'active_range': [0.2, 1.0]})

:func:`install_methods` checks every spec against a pipeline before it installs any, so a method the
pipeline cannot take is refused before sampling. Each name, the class it installs, what its scale sets,
and what scale 0 gives:

- ``atom``: :class:`AtomGuidance`, ``atom_scale`` (``normalize=True`` unless given): the stock pipeline;
- ``atom-feature``: :class:`FeatureGuidance`, ``feature_scale``: the stock pipeline;
- ``atom-sparse``: :class:`SparseAtomGuidance`, ``atom_scale`` (normalised; ``radius=``): the stock
  pipeline;
- ``pg``: :class:`ParticleGuidance`, ``pg_scale`` (normalised): the stock pipeline;
- ``cads``: :class:`CADS`, ``noise_scale`` (default 0.25): the stock pipeline;
- ``interval``: :class:`GuidanceInterval`, ``start`` (default 0; ``stop=``): the stock pipeline;
- ``apg``: :class:`APG`, ``eta`` (default 0): APG with ``η = 0``;
- ``autoguidance``: :class:`AutoGuidance`, ``autoguidance_scale`` (default: the pipeline's
  ``guidance_scale``; ``guide=`` is required): the guide's prediction alone.

The batch methods (``atom``, ``atom-feature``, ``atom-sparse``, ``pg``) act within groups: by default
the samples that share their conditioning (a prompt embedding or a class label); ``groups=`` overrides.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .apg import APG
from .atom_guidance import AtomGuidance
from .autoguidance import AutoGuidance
from .cads import CADS, conditioning_refusal
from .cfg_edit import cfg_refusal
from .denoiser_hook import DenoiserHook, _find_denoiser
from .feature_guidance import FeatureGuidance
from .guidance_interval import GuidanceInterval
from .noise import check_scheduler
from .particle_guidance import ParticleGuidance
from .sparse_guidance import SparseAtomGuidance


@dataclass(frozen=True)
class MethodSpec:
    """One method to install: its registry name, its scale (``None``: the method's default) and the
    keyword options of its class."""

    name: str
    scale: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registry entry: how a spec becomes a handle on a pipeline.

    Attributes:
        cls: the method's class.
        scale: the keyword of the class that the spec's scale sets.
        options: the other keywords a spec may set.
        defaults: keywords the registry sets unless the spec does (e.g. ``normalize=True``).
        needs_scale: whether a spec must give a scale.
        refusal: why a pipeline cannot take the method (``None``: it can), beyond having a denoiser
            and a supported scheduler.
        required: the options a spec must give.
    """

    cls: type[DenoiserHook]
    scale: str
    options: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_scale: bool = True
    refusal: Callable[[Any], str | None] = lambda pipe: None
    required: tuple[str, ...] = ()


def _cads_refusal(pipe: Any) -> str | None:
    return conditioning_refusal(pipe, _find_denoiser(pipe))


METHODS: dict[str, Method] = {
    "atom": Method(
        AtomGuidance, "atom_scale", ("active_range", "site", "normalize", "groups"), {"normalize": True}
    ),
    "atom-feature": Method(FeatureGuidance, "feature_scale", ("active_range", "site", "groups")),
    "atom-sparse": Method(
        SparseAtomGuidance,
        "atom_scale",
        ("radius", "active_range", "site", "normalize", "groups"),
        {"normalize": True},
    ),
    "pg": Method(ParticleGuidance, "pg_scale", ("active_range", "normalize", "groups"), {"normalize": True}),
    "cads": Method(
        CADS, "noise_scale", ("tau1", "tau2", "psi", "rescale"), needs_scale=False, refusal=_cads_refusal
    ),
    "interval": Method(GuidanceInterval, "start", ("stop",), needs_scale=False, refusal=cfg_refusal),
    "apg": Method(APG, "eta", ("momentum", "norm_threshold"), needs_scale=False, refusal=cfg_refusal),
    "autoguidance": Method(
        AutoGuidance,
        "autoguidance_scale",
        ("guide",),
        needs_scale=False,
        refusal=cfg_refusal,
        required=("guide",),
    ),
}


def parse_method(text: str) -> MethodSpec:
    """A :class:`MethodSpec` from ``NAME[:SCALE][,KEY=VALUE...]``; values are YAML scalars or flow
    lists (``active_range=[0.2, 1.0]``, ``normalize=false``, ``guide=runs/…/pipeline``).

    Raises:
        ValueError: an unknown name or option, a scale that is not a number, a missing ``=``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a method is written NAME[:SCALE][,KEY=VALUE...], e.g. 'atom:0.2'; got {text!r}")
    head, *pairs = _split_top_level(text.strip())
    name, _, scale_text = head.partition(":")
    name = name.strip()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {text!r}; known: {', '.join(sorted(METHODS))}")
    method, scale = METHODS[name], None
    if scale_text.strip():
        scale = _value(scale_text, text)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(
                f"the scale of {name!r} must be a finite number, got {scale_text.strip()!r} in {text!r}"
            )
        scale = float(scale)
    elif method.needs_scale:
        raise ValueError(
            f"method {name!r} needs a scale ({method.scale}): write e.g. '{name}:0.2'; got {text!r}"
        )
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"options are KEY=VALUE, got {pair.strip()!r} in {text!r}")
        if key not in method.options:
            allowed = ", ".join(method.options) or "none"
            raise ValueError(f"method {name!r} has no option {key!r} (options: {allowed}); in {text!r}")
        options[key] = _value(value, text)
    return MethodSpec(name, scale, options)


def check_methods(pipe: Any, specs: Sequence[MethodSpec | str]) -> list[MethodSpec]:
    """The specs parsed, each checked against ``pipe``.

    Raises:
        ValueError: naming the method and why the pipeline cannot take it.
    """
    parsed = [parse_method(spec) if isinstance(spec, str) else spec for spec in specs]
    names = [spec.name for spec in parsed]
    for spec in parsed:
        if not isinstance(spec, MethodSpec) or spec.name not in METHODS:
            raise ValueError(
                f"expected a MethodSpec of a known method ({', '.join(sorted(METHODS))}), got {spec!r}"
            )
        missing = [key for key in METHODS[spec.name].required if key not in spec.options]
        if missing:
            raise ValueError(
                f"method {spec.name!r} needs the option{'s' * (len(missing) > 1)} {', '.join(missing)}, "
                f"e.g. '{spec.name}:2.0,guide=<a saved pipeline folder>'"
            )
        if names.count(spec.name) > 1:
            raise ValueError(f"method {spec.name!r} is given twice; install it once")
        try:
            _find_denoiser(pipe)
            check_scheduler(pipe.scheduler)
            reason = METHODS[spec.name].refusal(pipe)
        except (TypeError, ValueError, AttributeError) as error:
            reason = str(error)
        if reason:
            raise ValueError(f"method {spec.name!r} cannot be installed on {type(pipe).__name__}: {reason}")
    return parsed


def install_methods(pipe: Any, specs: Sequence[MethodSpec | str]) -> list[DenoiserHook]:
    """Install the methods of ``specs`` on ``pipe``, in order, after checking all of them.

    Returns:
        The handles, in order; each has ``.remove()`` and ``.guided_calls``. When one fails to install,
        those before it are removed again.
    """
    handles: list[DenoiserHook] = []
    try:
        for spec in check_methods(pipe, specs):
            method = METHODS[spec.name]
            keywords = method.defaults | spec.options
            if spec.scale is not None:
                keywords[method.scale] = spec.scale
            handles.append(method.cls(pipe, **keywords))
    except BaseException:
        for handle in reversed(handles):
            handle.remove()
        raise
    return handles


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (a YAML flow list holds commas)."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _value(text: str, whole: str) -> Any:
    try:
        return yaml.safe_load(text.strip())
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read {text.strip()!r} in {whole!r} as a YAML value: {error}") from None


__all__ = ["METHODS", "Method", "MethodSpec", "check_methods", "install_methods", "parse_method"]
