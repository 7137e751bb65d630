"""Deprecated module path: atom guidance lives in :mod:`atomgen.pipelines.atom_guidance`."""

from .atom_guidance import (
    GUIDANCE_KERNEL,
    AtomGuidance,
    choose_site_and_separation,
    guide,
    separation_for,
)

__all__ = ["GUIDANCE_KERNEL", "AtomGuidance", "choose_site_and_separation", "guide", "separation_for"]
