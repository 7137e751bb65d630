"""The training application: configs, model builders, checkpoints and the accelerate loop.

It sits above the library (:mod:`atomgen` core, :mod:`atomgen.pipelines`, :mod:`atomgen.eval`) and
imports from it; nothing in the library imports from here.
"""

from .config import ConfigError, ExperimentConfig
from .loop import TrainingDiverged, train
from .run_lock import RunLocked

__all__ = ["ConfigError", "ExperimentConfig", "RunLocked", "TrainingDiverged", "train"]
