"""Text-to-image scores: CLIP score (prompt adherence) and diversity within each prompt.

- **CLIP score** (Hessel et al. 2021, as torchmetrics' ``CLIPScore`` computes it): ``100 × max(cos(e_I,
  e_T), 0)`` of the projected CLIP image and text embeddings, averaged over images.
- **Per-prompt diversity**: over the images of one prompt, the Vendi score of their features, the mean
  pairwise cosine distance ``1 − cos`` of their features (DINOv2 features: the DINO distance) and the mean
  pairwise LPIPS; averaged over prompts, with the standard deviation over prompts. A prompt with one
  image has no pair: its diversity is undefined, reported as such and left out of the averages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .hub_features import CLIPFeatures, clip_score_from_embeddings
from .scores import vendi

__all__ = [
    "PromptScores",
    "clip_scores",
    "mean_cosine_distance",
    "prompt_diversity",
    "prompt_groups",
    "prompt_scores",
]


def prompt_groups(prompts: list[str | None], where: str) -> tuple[list[str], np.ndarray]:
    """The distinct prompts in order of first appearance, and each image's index into them.

    Raises:
        ValueError: no image has a prompt, or some have none (a manifest of a prompt-free run).
    """
    if not prompts or all(p is None for p in prompts):
        raise ValueError(
            f"{where} has no prompts: the CLIP score and per-prompt diversity need each image's prompt "
            "(a manifest.json of `atomgen sample --prompts`, or a folder per prompt)"
        )
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise ValueError(f"{where}: {len(missing)} images have no prompt (the first is image {missing[0]})")
    order = list(dict.fromkeys(prompts))
    position = {prompt: i for i, prompt in enumerate(order)}
    return order, np.array([position[p] for p in prompts], dtype=np.int64)


def mean_cosine_distance(features: np.ndarray) -> float:
    """Mean of ``1 − cos(x_i, x_j)`` over the ``N(N − 1)/2`` pairs, from the sum of unit vectors:
    ``Σ_{i<j} u_iᵀu_j = (‖Σ u_i‖² − N) / 2``."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"a mean pairwise distance needs at least 2 images, got {len(x)}: it is undefined")
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(units)
    total = units.sum(0)
    return float(1.0 - (total @ total - n) / (n * (n - 1)))


def prompt_diversity(features: np.ndarray, prompt: str = "") -> dict[str, float]:
    """Vendi score and mean pairwise cosine distance of the images of one prompt.

    Raises:
        ValueError: fewer than 2 images: diversity within the prompt is undefined (not 0).
    """
    if len(features) < 2:
        raise ValueError(
            f"prompt {prompt!r} has {len(features)} image: diversity within a prompt is undefined for a "
            "single image (there is no pair); sample at least 2 images per prompt"
        )
    return {"vendi": vendi(features), "cosine_distance": mean_cosine_distance(features)}


@torch.no_grad()
def clip_scores(
    image_embeds: np.ndarray | torch.Tensor, prompts: list[str], clip: CLIPFeatures, index: np.ndarray
) -> np.ndarray:
    """The CLIP score of every image ``(N,)`` against its prompt (``prompts[index[i]]``)."""
    text = clip.embed_text(prompts).cpu()
    image = torch.as_tensor(np.asarray(image_embeds))
    return clip_score_from_embeddings(image, text[torch.from_numpy(index)]).numpy()


@dataclass
class PromptScores:
    """Per-prompt rows and their aggregates (the CLIP score over images; diversity over prompts).

    Attributes:
        rows: one per prompt: ``prompt``, ``images``, ``clip_score``, ``vendi``, ``cosine_distance``,
            ``lpips`` (``None`` where undefined or not computed).
        undefined: prompts with a single image (their diversity is undefined).
    """

    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    undefined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_scores(
    prompts: list[str],
    index: np.ndarray,
    *,
    features: np.ndarray | None = None,
    clip: np.ndarray | None = None,
    lpips: dict[int, tuple[float, int]] | None = None,
) -> PromptScores:
    """Per-prompt table and averages.

    Args:
        prompts: the distinct prompts; index: ``(N,)`` each image's prompt.
        features: ``(N, d)`` image features for Vendi and cosine distance (``None``: not computed).
        clip: ``(N,)`` CLIP scores (``None``: not computed).
        lpips: prompt position → (mean pairwise LPIPS, images), from
            :class:`~atomgen.eval.lpips.LPIPSGroupSums`.

    Raises:
        ValueError: diversity was asked for but no prompt has 2 images.
    """
    result = PromptScores()
    for position, prompt in enumerate(prompts):
        members = np.flatnonzero(index == position)
        row = {"prompt": prompt, "images": len(members), "clip_score": None}
        row |= {"vendi": None, "cosine_distance": None, "lpips": None}
        if clip is not None and len(members):
            row["clip_score"] = float(clip[members].mean())
        if len(members) < 2:
            result.undefined.append(prompt)
        else:
            if features is not None:
                row |= prompt_diversity(features[members], prompt)
            if lpips is not None:
                row["lpips"] = lpips[position][0]
        result.rows.append(row)
    if clip is not None:
        result.summary["clip_score"] = _spread(clip, over="images")
    if features is not None or lpips is not None:
        if len(result.undefined) == len(prompts):
            raise ValueError(
                f"every prompt has a single image: diversity within a prompt is undefined for all "
                f"{len(prompts)}; sample at least 2 images per prompt"
            )
        for key in ("vendi", "cosine_distance", "lpips"):
            values = [row[key] for row in result.rows if row[key] is not None]
            if values:
                result.summary[key] = _spread(np.array(values), over="prompts")
    result.summary["prompts"] = len(prompts)
    return result


def _spread(values: np.ndarray, over: str) -> dict:
    """Mean, standard deviation (``None`` for one value: there is no spread) and count."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"mean": float(values.mean()), "std": std, "count": len(values), "over": over}
