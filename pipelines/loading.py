"""``load_pipeline``: one way in for a saved pipeline, whether diffusers' or atomgen's, with no remote code.

``DiffusionPipeline.from_pretrained`` looks the class that ``model_index.json`` names up among diffusers'
own, so it cannot load ``AtomClassConditionalPipeline`` (nor any class outside diffusers) without running
code from the folder or the hub. :func:`load_pipeline` reads ``model_index.json`` first and loads the class
it names: a diffusers pipeline through diffusers, an atomgen pipeline through its own ``from_pretrained``.
Anything else, and pickled weights, are refused unless asked for.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from .pipeline_atom_class_conditional import AtomClassConditionalPipeline
from .pipeline_atom_ddim import AtomDDIMPipeline
from .pipeline_atom_ddpm import AtomDDPMPipeline
from .pipeline_atom_vae import AtomVAEPipeline

logger = logging.getLogger(__name__)

ATOMGEN_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    cls.__name__: cls
    for cls in (AtomClassConditionalPipeline, AtomDDIMPipeline, AtomDDPMPipeline, AtomVAEPipeline)
}
# The libraries whose classes a component of model_index.json may name without remote code: their
# classes come from the installed packages. "atomgen.separation" names the separation module.
TRUSTED_LIBRARIES = ("diffusers", "transformers", "atomgen")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # "org/name"


def load_pipeline(
    source: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> DiffusionPipeline:
    """Load a saved pipeline by the class its ``model_index.json`` names.

    - A diffusers pipeline (``DiTPipeline``, ``StableDiffusionPipeline``…) loads as diffusers loads it.
    - An atomgen pipeline (``AtomClassConditionalPipeline``…) loads through its own ``from_pretrained``.
    - A ``DDPMPipeline`` folder with a ``separation/`` subfolder (the ``pipeline/`` of an unconditional
      ``atomgen train`` run) loads as :class:`~atomgen.pipelines.AtomDDPMPipeline`, which samples exactly
      as ``DDPMPipeline`` and keeps the separation module; an ``AutoencoderKL`` folder (the ``vae/`` of
      a VAE run) as :class:`~atomgen.pipelines.AtomVAEPipeline`.

    Args:
        source: a folder, or a hub id (``"org/name"``) that is in the local cache or can be downloaded.
        torch_dtype: the dtype of the weights, passed to ``from_pretrained``.
        trust_remote_code: allow a pipeline or component class that is neither diffusers', transformers'
            nor atomgen's (code from the folder or the hub then runs, as diffusers runs it).
        allow_pickle: allow weights stored as pickles (``.bin``, ``.pt``…), which can run code when
            loaded; without it only ``.safetensors`` weights are read.

    Returns:
        The pipeline.

    Raises:
        FileNotFoundError: ``source`` is no folder here and no hub id.
        ValueError: a class outside diffusers and atomgen without ``trust_remote_code``, or pickled
            weights without ``allow_pickle``.
    """
    folder = Path(source).expanduser()
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}  # diffusers ≥ 0.42 name
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    target = str(folder) if folder.is_dir() else str(source)  # what from_pretrained reads
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            return _load_bare_folder(folder, kwargs)
        index = json.loads((folder / "model_index.json").read_text())
        if not allow_pickle:
            _refuse_pickles(folder)
    elif HUB_ID.match(str(source)) and not str(source).startswith((".", "~")):
        try:
            index = DiffusionPipeline.load_config(str(source))
        except OSError as error:
            raise FileNotFoundError(
                f"{source!r} is no folder here, and the hub repository of that name could not be read "
                f"({error.__class__.__name__}; offline, only a cached copy can be): pass the folder of a "
                "saved pipeline, or a hub id that is cached or reachable"
            ) from error
    else:
        raise FileNotFoundError(f"no pipeline folder at {str(source)!r} (and it is not a hub id 'org/name')")

    name = index.get("_class_name")
    untrusted = _untrusted_classes(index)
    if untrusted and not trust_remote_code:
        raise ValueError(
            f"{source}: model_index.json names {', '.join(untrusted)}, outside diffusers, transformers and "
            f"atomgen ({', '.join(sorted(ATOMGEN_PIPELINES))}); loading them runs code that comes with the "
            "checkpoint. Pass trust_remote_code=True if you trust it."
        )
    if isinstance(name, str) and name in ATOMGEN_PIPELINES:
        return ATOMGEN_PIPELINES[name].from_pretrained(target, **kwargs)
    if name == "DDPMPipeline" and (folder / "separation" / "config.json").is_file():
        return AtomDDPMPipeline.from_pretrained(folder, **kwargs)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return DiffusionPipeline.from_pretrained(target, **kwargs)


def _untrusted_classes(index: dict[str, Any]) -> list[str]:
    """The pipeline and component classes of ``model_index.json`` that come from neither diffusers,
    transformers nor atomgen, as ``"library.Class"``."""
    found = []
    name = index.get("_class_name")
    if isinstance(name, (list, tuple)):  # [module file, class]: a custom pipeline's code
        found.append(".".join(map(str, name)))
    elif not (name in ATOMGEN_PIPELINES or hasattr(diffusers, str(name))):
        found.append(str(name))
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if library is None:  # an optional component left out
            continue
        if not isinstance(library, str) or library.split(".")[0] not in TRUSTED_LIBRARIES:
            found.append(f"{library}.{class_name} ({key})")
    return found


def _refuse_pickles(folder: Path) -> None:
    """Refuse a component folder whose weights are pickles only (no ``.safetensors`` beside them)."""
    pickled = []
    for component in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = [path for path in component.iterdir() if path.is_file()]
        if any(p.suffix in PICKLE_SUFFIXES for p in files) and not any(
            p.suffix == ".safetensors" for p in files
        ):
            pickled.append(component.name)
    if pickled:
        raise ValueError(
            f"{folder}: the weights of {', '.join(pickled)} are pickles only (.bin, .pt…), which can run code "
            "when loaded. Convert them to safetensors (load and save_pretrained in a trusted session), or "
            "pass allow_pickle=True if you trust the files."
        )


def _load_bare_folder(folder: Path, kwargs: dict[str, Any]) -> DiffusionPipeline:
    """A folder without ``model_index.json``: a bare ``AutoencoderKL`` (what a VAE run writes), else an
    error that says what is there."""
    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL":
        return AtomVAEPipeline.from_pretrained(folder, **kwargs)
    hint = ""
    if (folder / "pipeline" / "model_index.json").is_file():
        hint = f"; a training run keeps its pipeline in {folder / 'pipeline'}"
    raise FileNotFoundError(
        f"{folder} holds no model_index.json, so it is no saved pipeline{hint}. Pass the folder that "
        "save_pretrained wrote."
    )


__all__ = ["load_pipeline"]
