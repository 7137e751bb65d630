"""atomgen.sampling: ``atomgen sample`` — N images from any diffusers pipeline with sampling-time methods,
deterministic per batch, sharded over ``accelerate launch`` processes, resumable, with a manifest.

>>> from atomgen.sampling import SampleConfig, sample
>>> config = SampleConfig("runs/cfg/model", "samples/atom", num_samples=64, methods=("atom:0.2",))
>>> manifest = sample(config)  # doctest: +SKIP

``atomgen compare`` (:mod:`atomgen.sampling.compare`) runs the CFG benchmark on any class-conditional or
prompt-conditioned pipeline through :func:`sample`. An application package: it imports the library (``atomgen``,
``atomgen.pipelines``, ``atomgen.eval``) and ``atomgen.benchmark``; nothing in the library imports it.
"""

from .calls import PipelineCall, class_count
from .loading import load, pipeline_source
from .manifest import FORMAT, MANIFEST, build_manifest, check_out, config_hash
from .plan import Batch, balanced_counts, plan_batches, shard
from .sampler import NPZ, SampleConfig, sample

__all__ = [
    "FORMAT",
    "MANIFEST",
    "NPZ",
    "Batch",
    "PipelineCall",
    "SampleConfig",
    "balanced_counts",
    "build_manifest",
    "check_out",
    "class_count",
    "config_hash",
    "load",
    "pipeline_source",
    "plan_batches",
    "sample",
    "shard",
]
