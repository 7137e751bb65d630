"""atomgen.pipelines: diffusers pipelines and sampling-time guidance (method.md §7–8).

- :class:`AtomDDPMPipeline`, :class:`AtomDDIMPipeline`: diffusers' DDPM / DDIM sampling of a
  ``UNet2DModel``, with the separation module trained with it as an optional component and atom
  guidance as a call option; ``save_pretrained`` / ``from_pretrained`` round-trip all of it.
- :class:`AtomVAEPipeline`: prior samples and reconstructions through an ``AutoencoderKL``.
- :func:`guide`: training-free atom guidance installed on any diffusers pipeline's denoiser.
- :class:`ParticleGuidance`, :class:`CADS`: the sampling-time peers, installed the same way.
"""

from .cads import CADS
from .denoiser_hook import DenoiserCall, DenoiserHook
from .energy_guidance import EnergyGuidance
from .feature_guidance import FeatureGuidance, guide_features
from .guidance import AtomGuidance, guide
from .particle_guidance import ParticleGuidance
from .pipeline_atom_class_conditional import AtomClassConditionalPipeline
from .pipeline_atom_ddim import AtomDDIMPipeline
from .pipeline_atom_ddpm import AtomDDPMPipeline
from .pipeline_atom_vae import AtomVAEPipeline

__all__ = [
    "CADS",
    "AtomClassConditionalPipeline",
    "AtomDDIMPipeline",
    "AtomDDPMPipeline",
    "AtomGuidance",
    "AtomVAEPipeline",
    "DenoiserCall",
    "DenoiserHook",
    "EnergyGuidance",
    "FeatureGuidance",
    "ParticleGuidance",
    "guide",
    "guide_features",
]
