"""The sample manifest (``manifest.json``): what was sampled, how, and which file holds which image.

Format ``atomgen-samples/1``::

    {"format": "atomgen-samples/1",
     "pipeline": {"source": ..., "class": ..., "config_hash": ...},
     "settings": {"methods": [...], "guidance_scale": ..., "steps": ..., "seed": ..., "batch_size": ...,
                  "dtype": ..., "scheduler": ..., "num_samples": ...},
     "versions": {"atomgen": ..., "diffusers": ..., "torch": ...},
     "complete": true,
     "images": [{"file": "images/000000.png", "index": 0, "batch": 0, "class_label": null,
                 "prompt": "a dog"}, ...]}

``file`` is relative to the manifest's folder. ``complete`` is false while a run is unfinished: the
images listed are the run's plan, and a file of an unfinished batch may be missing. Two manifests
describe the same run when everything but ``versions`` and ``complete`` is equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from atomgen.io import write_json

from .plan import Batch

logger = logging.getLogger(__name__)

FORMAT = "atomgen-samples/1"
MANIFEST = "manifest.json"
IMAGES = "images"
IDENTITY = ("format", "pipeline", "settings", "images")  # what makes two manifests the same run


def config_hash(pipe: DiffusionPipeline) -> str:
    """sha256 of the pipeline's and its components' configs, without the paths and versions they were
    loaded from (the keys that start with ``_``, but ``_class_name``): the same model moved elsewhere
    hashes the same, another architecture or scheduler does not. Weights with the same config do."""

    def clean(config: Any) -> dict:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return {k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"}

    payload = {"pipeline": clean(pipe.config)}
    for name, component in sorted(pipe.components.items()):
        config = getattr(component, "config", None)
        payload[name] = None if config is None else clean(config)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def versions() -> dict[str, str]:
    import diffusers
    import torch

    from atomgen import __version__

    return {"atomgen": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}


def image_file(index: int) -> str:
    return f"{IMAGES}/{index:06d}.png"


def describe_pipeline(source: str, pipe: DiffusionPipeline) -> dict[str, str]:
    """The manifest's ``pipeline`` entry of ``pipe`` as loaded (before a scheduler or method changes it).

    Args:
        source: the pipeline as the user named it: a resolved folder path, or a hub id.
        pipe: the loaded pipeline.
    """
    return {"source": source, "class": type(pipe).__name__, "config_hash": config_hash(pipe)}


def build_manifest(
    pipeline: dict[str, str], settings: dict[str, Any], batches: list[Batch], kind: str
) -> dict[str, Any]:
    """The manifest of a run (``complete`` false) that samples ``batches``.

    Args:
        pipeline: the ``pipeline`` entry, :func:`describe_pipeline`.
        settings: the ``settings`` entry.
        batches: the layout of :func:`~atomgen.sampling.plan.plan_batches`.
        kind: ``"class"``, ``"prompt"`` or ``"unconditional"``: which field a conditioning fills.
    """
    images = [
        {
            "file": image_file(index),
            "index": index,
            "batch": batch.index,
            "class_label": value if kind == "class" else None,
            "prompt": value if kind == "prompt" else None,
        }
        for batch in batches
        for index, value in zip(batch.image_indices, batch.per_image, strict=True)
    ]
    return {
        "format": FORMAT,
        "pipeline": pipeline,
        "settings": settings,
        "versions": versions(),
        "complete": False,
        "images": images,
    }


def check_out(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``out`` holds this very run (to resume); ``False`` when it is new or empty.

    Raises:
        ValueError: ``out`` is a file, holds another run's manifest, or holds files but no manifest.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder (new, empty, or this run's own to resume)")
    path = out / MANIFEST
    if not path.is_file():
        if any(out.iterdir()):
            raise ValueError(
                f"--out {out} holds files but no {MANIFEST}: it is not a sample folder; name a new or empty one"
            )
        return False
    try:
        existing = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); name another --out folder") from error
    differences = [key for key in IDENTITY if existing.get(key) != manifest[key]]
    if differences:
        raise ValueError(
            f"--out {out} holds a different run ({MANIFEST} differs in {_describe(existing, manifest)}); "
            "resuming needs the same pipeline, settings and conditioning: name a new --out folder, or "
            "repeat that run's options"
        )
    if existing.get("versions") != manifest["versions"]:
        logger.warning(
            "resuming %s, sampled with %s, under %s: the remaining images may differ in the last bits",
            out,
            existing.get("versions"),
            manifest["versions"],
        )
    return True


def _describe(existing: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The first differences between two manifests, as ``key: old → new``."""
    parts = []
    for key in IDENTITY:
        old, new = existing.get(key), manifest[key]
        if isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{key}.{k}: {old.get(k)!r} → {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
            parts += [f"{key}.{k}: {old[k]!r} → absent" for k in old if k not in new]
        elif old == new:
            continue
        elif key == "images" and isinstance(old, list):
            same = len(old) == len(new)
            parts.append(
                "images: their conditioning or batches" if same else f"images: {len(old)} → {len(new)}"
            )
        else:
            parts.append(f"{key}: {old!r} → {new!r}")
    return "; ".join(parts[:3]) + ("; …" if len(parts) > 3 else "")


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_json(out / MANIFEST, manifest)


__all__ = [
    "FORMAT",
    "IMAGES",
    "MANIFEST",
    "build_manifest",
    "check_out",
    "config_hash",
    "describe_pipeline",
    "image_file",
    "write_manifest",
]
