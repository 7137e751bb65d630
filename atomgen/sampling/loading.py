"""What ``atomgen sample`` loads: a diffusers folder, a hub id, or an atomgen run directory (its
``pipeline/``), through :func:`atomgen.pipelines.loading.load_pipeline` — no code that came with a
model runs, and weights load from safetensors only, unless the user allows either."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from atomgen.pipelines.loading import load_pipeline

MODEL_INDEX = "model_index.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pipeline_source(source: str | Path) -> str:
    """``source``, or the folder an atomgen run directory keeps its model in (``pipeline/``, or a VAE
    run's ``vae/``); anything else is :func:`~atomgen.pipelines.loading.load_pipeline`'s to judge.

    Raises:
        FileNotFoundError: an atomgen run whose training has not written its model yet.
    """
    path = Path(source).expanduser()
    if not path.is_dir() or (path / MODEL_INDEX).is_file() or (path / "config.json").is_file():
        return str(source)
    for folder, config in ((path / "pipeline", MODEL_INDEX), (path / "vae", "config.json")):
        if (folder / config).is_file():
            return str(folder)
    if (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{source} is an atomgen run whose training has not finished: it has no pipeline/ yet. Resume "
            "it (atomgen train CONFIG --resume latest), or name a snapshot (snapshots/step-<k>/pipeline)"
        )
    return str(source)


def load(
    source: str | Path, *, dtype: str = "fp32", trust_remote_code: bool = False, allow_pickle: bool = False
) -> DiffusionPipeline:
    """The pipeline ``source`` names (see :func:`pipeline_source`), its weights in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return load_pipeline(
        pipeline_source(source),
        torch_dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )


__all__ = ["DTYPES", "load", "pipeline_source"]
