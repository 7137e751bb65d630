"""atomgen.pipelines: diffusers pipelines and sampling-time methods (method.md §7–8).

- :class:`AtomDDPMPipeline`, :class:`AtomDDIMPipeline`: diffusers' DDPM / DDIM sampling of a
  ``UNet2DModel``, with the separation module trained with it as an optional component and atom
  guidance as a call option; ``save_pretrained`` / ``from_pretrained`` round-trip all of it.
- :class:`AtomClassConditionalPipeline`: class-conditional sampling with classifier-free guidance.
- :class:`AtomVAEPipeline`: prior samples and reconstructions through an ``AutoencoderKL``.
- Sampling-time methods, each a class installed on any diffusers pipeline's denoiser (a context manager
  with ``.remove()`` and ``.guided_calls``): :class:`AtomGuidance`, :class:`FeatureGuidance`,
  :class:`SparseAtomGuidance`, :class:`ParticleGuidance`, :class:`CADS`, and on CFG pipelines :class:`GuidanceInterval`,
  :class:`APG`, :class:`AutoGuidance`. :mod:`.methods` names them for ``NAME:SCALE`` strings.
- :func:`load_pipeline`: any diffusers pipeline folder or hub id and atomgen's own, without remote code.
- :func:`guide`, :func:`guide_features`: deprecated functional aliases of the first two.
"""

from .apg import APG
from .atom_guidance import AtomGuidance, guide
from .autoguidance import AutoGuidance
from .cads import CADS
from .cfg_edit import CFGEdit
from .denoiser_hook import DenoiserCall, DenoiserHook
from .energy_guidance import EnergyGuidance
from .feature_guidance import FeatureGuidance, guide_features
from .guidance_interval import GuidanceInterval
from .loading import load_pipeline
from .particle_guidance import ParticleGuidance
from .pipeline_atom_class_conditional import AtomClassConditionalPipeline
from .pipeline_atom_ddim import AtomDDIMPipeline
from .pipeline_atom_ddpm import AtomDDPMPipeline
from .pipeline_atom_vae import AtomVAEPipeline
from .sparse_guidance import SparseAtomGuidance

__all__ = [
    "APG",
    "CADS",
    "AtomClassConditionalPipeline",
    "AtomDDIMPipeline",
    "AtomDDPMPipeline",
    "AtomGuidance",
    "AtomVAEPipeline",
    "AutoGuidance",
    "CFGEdit",
    "DenoiserCall",
    "DenoiserHook",
    "EnergyGuidance",
    "FeatureGuidance",
    "GuidanceInterval",
    "ParticleGuidance",
    "SparseAtomGuidance",
    "guide",
    "guide_features",
    "load_pipeline",
]
