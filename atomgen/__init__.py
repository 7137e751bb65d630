"""atomgen: atom separation for diffusers — more diverse generators, measured honestly.

Atom separation follows atom modeling (Tuan, Chiu & Wang, "Dynamic Latent Separation for Deep
Learning"): samples are atoms, their sub-components particles with learned roles, and a softened Coulomb
energy between particles of different samples pushes samples apart in latent space.
"""

from .baselines import DispersiveLoss, DispersiveOutput
from .hooks import AttachHandle, attach
from .separation import AtomOutput, AtomSeparation

__version__ = "0.1.0"

__all__ = [
    "AtomOutput",
    "AtomSeparation",
    "AttachHandle",
    "DispersiveLoss",
    "DispersiveOutput",
    "__version__",
    "attach",
]
