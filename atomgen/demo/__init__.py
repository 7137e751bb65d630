"""The demo application: ``atomgen demo`` trains, samples, scores and writes the report.

:mod:`.config` holds :class:`DemoConfig`; :mod:`.run` runs the sections in order: :mod:`.ddpm` (three
trainings and five ways of sampling), :mod:`.attribution` (learned importances against saliency
baselines), :mod:`.cfg` (classifier-free guidance) and :mod:`.vae` (atom separation at a VAE's encoder).
Each section writes its own part of the report; :mod:`.report` joins them, :mod:`.scoring` scores a set
of samples, :mod:`.figures` draws. It uses the training application and the library; nothing below
imports from here.
"""

from .config import DEFAULT_CONFIG, LIBRARY_MODE, METHODS, MODELS, DemoConfig, Method
from .run import run_demo

__all__ = ["DEFAULT_CONFIG", "LIBRARY_MODE", "METHODS", "MODELS", "DemoConfig", "Method", "run_demo"]
