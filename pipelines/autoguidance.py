"""Autoguidance (Karras et al., NeurIPS 2024) on any CFG pipeline: :class:`AutoGuidance`.

Guide a model with a weaker version of itself (an earlier checkpoint, a smaller model) instead of its
unconditional prediction: ``ε_guide + w (ε − ε_guide)``, both on the conditional inputs. Under CFG's
doubled batch the unconditional half's prediction is replaced by the guiding model's prediction on the
*conditional* inputs, so the pipeline's own ``ε_u + w (ε_c − ε_u)`` becomes exactly that.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch import nn

from .cfg_edit import CFGEdit
from .denoiser_hook import DENOISER_NAMES, DenoiserCall, _find_denoiser, prediction_tensor

# The config entries a guide must share with the denoiser: the shapes of its inputs and outputs and
# how it reads the conditioning. Width and depth may differ (a smaller model guides as well).
MATCHING_CONFIG = (
    "sample_size",
    "in_channels",
    "out_channels",
    "patch_size",
    "num_class_embeds",
    "class_embed_type",
    "num_embeds_ada_norm",
    "cross_attention_dim",
    "joint_attention_dim",
    "pooled_projection_dim",
    "caption_channels",
)


class AutoGuidance(CFGEdit):
    r"""Autoguidance: classifier-free guidance's unconditional prediction replaced by a guiding model's.

    At every call with the doubled batch (``guidance_scale > 1``), the guiding denoiser is called on the
    conditional half's inputs (latents, timestep, prompt embeddings or class labels) and its prediction
    replaces the unconditional half's, so the pipeline's CFG yields ``ε_guide + w (ε − ε_guide)`` with
    its own ``w = guidance_scale``. With ``autoguidance_scale`` set, both halves get
    ``ε_guide + s (ε − ε_guide)`` instead, which the pipeline's CFG returns unchanged at any ``w > 1``.

    Args:
        pipe: a pipeline with classifier-free guidance (see :class:`GuidanceInterval`).
        guide: the guiding model: a denoiser module of the same kind and shapes as the pipeline's, a
            pipeline holding one, or a folder that ``type(pipe).from_pretrained`` (or the denoiser class's
            ``from_pretrained``) loads, e.g. an EMA snapshot ``<run>/snapshots/step-500/pipeline``.
        autoguidance_scale: ``s``; ``None`` (default) uses the pipeline's ``guidance_scale``.

    Raises:
        ValueError: the pipeline does no CFG, or the guide differs in kind or shape from the denoiser.

    Example:
        >>> from atomgen.pipelines import AtomClassConditionalPipeline, AutoGuidance
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> def unet(width):
        ...     return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, norm_num_groups=4,
        ...         block_out_channels=(width, 2 * width), num_class_embeds=11,
        ...         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomClassConditionalPipeline(unet(8), DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with AutoGuidance(pipe, guide=unet(4)) as handle:  # a smaller model guides
        ...     images = pipe(class_labels=[1, 2], guidance_scale=2.0, num_inference_steps=3).images
        >>> handle.guided_calls
        3
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        guide: nn.Module | DiffusionPipeline | str | os.PathLike,
        autoguidance_scale: float | None = None,
    ):
        if autoguidance_scale is not None and (
            not isinstance(autoguidance_scale, numbers.Real) or not math.isfinite(autoguidance_scale)
        ):
            raise ValueError(
                f"autoguidance_scale must be a finite number or None, got {autoguidance_scale!r}"
            )
        self.scale = None if autoguidance_scale is None else float(autoguidance_scale)
        self._guide_source = guide
        super().__init__(pipe)

    def setup(self) -> None:
        super().setup()
        name = next(n for n in DENOISER_NAMES if getattr(self.pipe, n, None) is self.denoiser)
        guide = load_guide(self._guide_source, type(self.pipe), self.denoiser, name)
        check_guide(guide, self.denoiser)
        if (guide.device, guide.dtype) != (self.denoiser.device, self.denoiser.dtype):
            guide = guide.to(self.denoiser.device, self.denoiser.dtype)
        self.guide = guide.eval()

    def edit(
        self, call: DenoiserCall, cond: torch.Tensor, uncond: torch.Tensor, cond_call: DenoiserCall
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = cond_call.guided if cond_call.doubled else slice(None)
        count = cond_call.sample.shape[0]
        args, kwargs = _rows(cond_call.args, rows, count), _rows(cond_call.kwargs, rows, count)
        with torch.no_grad():
            guided = prediction_tensor(self.guide(*args, **kwargs))[:, : cond.shape[1]].to(cond.dtype)
        if self.scale is None:
            return cond, guided
        combined = guided + self.scale * (cond - guided)
        return combined, combined

    def __repr__(self) -> str:
        return f"AutoGuidance(guide={type(self.guide).__name__}, autoguidance_scale={self.scale})"


def load_guide(guide: Any, pipeline_class: type, denoiser: nn.Module, name: str = "unet") -> nn.Module:
    """The guiding denoiser from a module, a pipeline, or a folder: a pipeline's (its ``name``
    subfolder, ``unet`` or ``transformer``, else the whole pipeline) or a model's."""
    if isinstance(guide, nn.Module):
        return guide
    if isinstance(guide, DiffusionPipeline) or any(
        isinstance(getattr(guide, n, None), nn.Module) for n in DENOISER_NAMES
    ):
        return _find_denoiser(guide)
    if isinstance(guide, (str, os.PathLike)):
        folder = os.fspath(guide)
        if not os.path.isdir(folder):
            raise ValueError(
                f"AutoGuidance guide={folder!r} is not a folder; pass a saved pipeline or model folder"
            )
        # the denoiser's own folder first (a pipeline's unet/ or transformer/, or a model folder): it
        # loads without the rest of the pipeline
        for sub in (name, ""):
            if os.path.isfile(os.path.join(folder, sub, "config.json")):
                return type(denoiser).from_pretrained(os.path.join(folder, sub))
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return _find_denoiser(pipeline_class.from_pretrained(folder))
        raise ValueError(
            f"AutoGuidance guide={folder!r} holds neither a pipeline (model_index.json) nor a "
            f"{type(denoiser).__name__} (config.json)"
        )
    raise TypeError(
        f"AutoGuidance guide= takes a denoiser module, a pipeline or a folder; got {type(guide).__name__}"
    )


def check_guide(guide: nn.Module, denoiser: nn.Module) -> None:
    """Refuse a guide that cannot stand in for ``denoiser``: another class, or other shapes."""
    if guide is denoiser:
        raise ValueError("AutoGuidance guide= is the pipeline's own denoiser; guide with a weaker model")
    if type(guide) is not type(denoiser):
        raise ValueError(
            f"AutoGuidance guide is a {type(guide).__name__}, the pipeline's denoiser a "
            f"{type(denoiser).__name__}; the guide must be the same kind of model (an earlier checkpoint "
            "or a smaller config of it)"
        )
    mine, theirs = dict(getattr(denoiser, "config", {})), dict(getattr(guide, "config", {}))
    differ = {
        key: (theirs.get(key), mine.get(key)) for key in MATCHING_CONFIG if theirs.get(key) != mine.get(key)
    }
    if differ:
        detail = ", ".join(f"{key}={a!r} (denoiser: {b!r})" for key, (a, b) in differ.items())
        raise ValueError(
            f"AutoGuidance guide does not match the pipeline's {type(denoiser).__name__}: {detail}. The "
            "guide must take the same inputs and predict the same outputs"
        )


def _rows(value: Any, rows: slice, count: int) -> Any:
    """``value`` with every tensor of ``count`` rows cut to ``rows`` (tuples, lists and dicts inside)."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == count else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(item, rows, count) for item in value)
    if isinstance(value, dict):
        return {key: _rows(item, rows, count) for key, item in value.items()}
    return value


__all__ = ["AutoGuidance", "check_guide", "load_guide"]
