"""The demo application: ``atomgen demo`` trains, samples, scores and writes the report.

:mod:`.run` is the experiment, :mod:`.cfg` and :mod:`.vae` its classifier-free-guidance and VAE
sections, :mod:`.report` turns the measurements into tables, :mod:`.figures` draws them. It uses the
training application and the library; nothing below imports from here.
"""

from .run import DEFAULT_CONFIG, LIBRARY_MODE, METHODS, MODELS, DemoConfig, Method, run_demo

__all__ = ["DEFAULT_CONFIG", "LIBRARY_MODE", "METHODS", "MODELS", "DemoConfig", "Method", "run_demo"]
