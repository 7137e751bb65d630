"""Scores of conditional samples, group by group.

- :class:`ClassScorer`, class-conditional samples: each class's samples against that class's real images
  (a dataset atomgen knows, or labelled images of your own: :func:`open_real`) on an extractor's features
  (FID, precision, recall, density, coverage, Vendi, LPIPS diversity), averaged over classes, and class
  accuracy, the share of samples a classifier (a committed one, or a transformers image classifier) gives
  the requested label.
- :class:`PromptScorer`, samples of text prompts: the CLIP score (prompt adherence), the diversity within
  each prompt on the extractor's features (Vendi, mean pairwise cosine distance), and with reference
  images per prompt each prompt's samples against its references (FD, precision, recall, density,
  coverage); averaged over prompts, as ``atomgen eval`` computes them (:mod:`atomgen.eval.prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from atomgen.eval import ImageSource


@torch.no_grad()
def features_of(extractor: Any, images: torch.Tensor | ImageSource) -> np.ndarray:
    """``extractor``'s features of ``images`` (in [0, 1]; a tensor or an image source) in batches of 500
    on its device, float64."""
    device = next(extractor.parameters()).device
    batches = images.split(500) if isinstance(images, torch.Tensor) else images.batches(500)
    return torch.cat([extractor(b.to(device)).cpu() for b in batches]).double().numpy()


class ClassScorer:
    """Per-class scores of samples against real images, with the class accuracy (``accuracy``).

    Args:
        real: the real images ``(N, C, H, W)`` in [0, 1], or an image source of them.
        real_labels: their labels ``(N,)``.
        extractor: the feature extractor (a module mapping images in [0, 1] to ``(B, D)`` features).
        classifier: the classifier of :func:`atomgen.eval.classify` (class accuracy).
        lpips: an :class:`atomgen.eval.LPIPSFeatures` fitted to the resolution (the LPIPS diversity).
    """

    def __init__(
        self,
        real: torch.Tensor | ImageSource,
        real_labels: np.ndarray,
        extractor: Any,
        classifier: Any,
        lpips: Any,
    ):
        self.real_labels, self.extractor, self.classifier, self.lpips = (
            real_labels,
            extractor,
            classifier,
            lpips,
        )
        self.real_features = features_of(extractor, real)

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        resolution: int,
        limit: int | None,
        device: torch.device,
        extractor: str | None = None,
        weights: str | None = None,
        classifier: str | Any | None = None,
        classes: Sequence[int] | None = None,
    ) -> ClassScorer:
        """The scorer of a dataset atomgen knows (``limit``: the fixed subset training takes, see
        :func:`open_real`), with class accuracy from ``classifier`` (default: the dataset's own; see
        :meth:`load`) and on ``extractor``'s features (default: the committed classifier's own)."""
        from atomgen.eval.run import CLASSIFIER_OF_DATASET as CLASSIFIER  # dataset → its classifier

        classifier = classifier or CLASSIFIER[dataset]
        if extractor is None and not isinstance(classifier, str):
            raise ValueError("for_dataset with a loaded classifier: name the extractor (extractor=)")
        real = open_real(dataset, limit, resolution)
        return cls.load(real, classifier, resolution, device, extractor or classifier, weights, classes)

    @classmethod
    def load(
        cls,
        real: ImageSource,
        classifier: str | Any,
        resolution: int,
        device: torch.device,
        extractor: str,
        weights: str | None = None,
        classes: Sequence[int] | None = None,
    ) -> ClassScorer:
        """The scorer of labelled real images (:func:`open_real`) and a classifier.

        Args:
            real: the real images, with ``labels``.
            classifier: the class-accuracy judge: a name of :func:`atomgen.eval.load_classifier_logits`
                (a committed classifier, or a transformers image classifier's folder or hub id), or one
                already loaded.
            resolution: the samples' side (the LPIPS diversity is fitted to it).
            extractor: a name of :func:`atomgen.eval.load_extractor`, with ``weights`` for
                ``dinov2``/``clip``; a committed classifier's name gives its features.
            classes: score only these classes: the other real images are left out.
        """
        from atomgen.eval import LPIPSFeatures, load_classifier_logits, load_extractor

        if real.labels is None:
            raise ValueError(f"{real.name} has no class labels")
        kept = np.isin(real.labels, list(classes)) if classes is not None else None
        if kept is not None and not kept.all():
            real = subset(real, np.flatnonzero(kept))
        judge = load_classifier_logits(classifier) if isinstance(classifier, str | Path) else classifier
        return cls(
            real,
            real.labels,
            load_extractor(extractor, device, weights=weights),
            judge.to(device),
            LPIPSFeatures().fit_to(resolution).to(device),
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
        """The scores of ``images`` (in [0, 1]) sampled for ``labels``."""
        from atomgen.eval import classify, per_class_scores

        features = features_of(self.extractor, images)
        scores = per_class_scores(
            self.real_features, self.real_labels, features, labels, images=images, lpips=self.lpips
        )
        return {**scores, "accuracy": float((classify(images, self.classifier) == labels).mean())}


def open_real(real: str | Path, limit: int | None = None, resolution: int | None = None) -> ImageSource:
    """Labelled real images of class-conditional scores.

    Args:
        real: a dataset atomgen knows (grey, as training loads it), a ``.npz`` with ``images`` and
            ``labels``, or a folder written by ``atomgen sample`` (its ``manifest.json`` names each
            image's class label); anything else :func:`atomgen.eval.open_source` opens with labels.
        limit: a dataset's fixed subset of this many (``data.limit`` of training); otherwise the first
            ``limit`` images. ``None``: all.
        resolution: a dataset's side (``None``: its own); other images are used as they are.

    Raises:
        ValueError: the images have no class labels.
    """
    from atomgen.data import load_dataset
    from atomgen.eval import TensorSource, open_source
    from atomgen.eval.sources import DATASETS

    if str(real) in DATASETS:
        data = load_dataset(str(real), resolution=resolution, channels=1, limit=limit)
        return TensorSource(data.images, value_range=(-1.0, 1.0), name=data.name, labels=data.labels)
    source = open_source(real)
    if source.labels is None:
        raise _unlabelled(real)
    return source if limit is None or limit >= len(source) else subset(source, np.arange(limit))


def real_labels(real: str | Path, limit: int | None = None) -> np.ndarray:
    """The labels of :func:`open_real`'s images, without reading a ``.npz``'s images (a large real set's
    labels are checked on every process before anything is sampled; the images are read to be scored)."""
    path = Path(str(real))
    if path.suffix != ".npz" or not path.is_file():
        return open_real(real, limit).labels
    with np.load(path) as archive:
        if "labels" not in archive:
            raise _unlabelled(real)
        return np.asarray(archive["labels"], dtype=np.int64)[:limit]


def _unlabelled(real: str | Path) -> ValueError:
    from atomgen.eval.sources import DATASETS

    return ValueError(
        f"--real {real}: no class labels. Real images of a class-conditional pipeline are a .npz with "
        "'images' and 'labels' arrays, or a folder written by `atomgen sample` (its manifest.json "
        f"names each image's class_label), or one of the datasets {', '.join(DATASETS)}"
    )


def subset(source: ImageSource, index: np.ndarray) -> ImageSource:
    """The images of ``source`` (held in memory, or image files) at ``index``, with their labels."""
    from atomgen.eval import FolderSource, TensorSource

    labels = None if source.labels is None else source.labels[index]
    if isinstance(source, TensorSource):
        return TensorSource(source.images[index], name=source.name, labels=labels)
    if isinstance(source, FolderSource):
        part = FolderSource(source.root, paths=[source.paths[i] for i in index])
        part.name, part.labels, part.mode, part.size = source.name, labels, source.mode, source.size
        return part
    raise TypeError(f"cannot take a subset of {type(source).__name__} {source.name}")


def check_real_classes(labels: np.ndarray, classes: Sequence[int], num_classes: int, real: str) -> None:
    """Refuse real labels outside the pipeline's ``num_classes``, and a compared class (``classes``)
    with fewer real images than per-class precision and recall need (``PRDC_K + 1``).

    Raises:
        ValueError: naming the labels or the class, and what to do.
    """
    from atomgen.eval.per_class import PRDC_K

    outside = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if len(outside):
        raise ValueError(
            f"--real {real} has labels outside the pipeline's classes 0…{num_classes - 1}: "
            f"{outside[:10].tolist()}{' …' if len(outside) > 10 else ''}. Its labels must be the "
            "pipeline's class ids (for an ImageNet DiT, ImageNet-1k ids 0…999)"
        )
    counts = np.bincount(labels, minlength=num_classes)
    few = [c for c in classes if counts[c] < PRDC_K + 1]
    if few:
        listed = ", ".join(f"class {c}: {counts[c]}" for c in few[:10]) + (" …" if len(few) > 10 else "")
        raise ValueError(
            f"--real {real} has too few images of {len(few)} of the classes compared ({listed}): per-class "
            f"precision and recall use {PRDC_K} nearest neighbours, so every class compared needs at least "
            f"{PRDC_K + 1} real images; add images, raise --real-limit, or compare fewer classes "
            "(--class-labels)"
        )


class PromptScorer:
    """Per-prompt scores of samples of ``prompts``: ``clip_score`` (``100 × max(cos, 0)`` of the CLIP image
    and text embeddings, the mean over images), the diversity within each prompt on the extractor's
    features — ``vendi`` and the mean pairwise cosine distance (``dino_distance`` on DINOv2 features,
    else ``cosine_distance``), averaged over prompts — and, with reference images, each prompt's samples
    against that prompt's references: ``fid`` (the FD on the extractor's features), ``precision``,
    ``recall``, ``density`` and ``coverage`` (k = 5), averaged over prompts.

    Args:
        prompts: the prompts, in the order of the run.
        extractor: the feature extractor of the diversity and reference scores.
        clip: the CLIP model of the CLIP score (an :class:`atomgen.eval.CLIPFeatures` with a tokenizer).
        distance: the name of the cosine distance in the scores.
        reference: the reference images' features ``(N, D)`` and each one's position in ``prompts``
            (``-1``: a prompt not compared); ``None``: no reference scores.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        extractor: Any,
        clip: Any,
        distance: str = "cosine_distance",
        reference: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.prompts, self.extractor, self.clip = list(prompts), extractor, clip
        self.distance, self.reference = distance, reference
        self.position = {prompt: i for i, prompt in enumerate(self.prompts)}

    @classmethod
    def load(
        cls,
        prompts: Sequence[str],
        device: torch.device,
        extractor: str = "dinov2",
        weights: str | None = None,
        clip_weights: str | None = None,
        reference: str | Path | None = None,
    ) -> PromptScorer:
        """The scorer on ``extractor``'s features (a name of :func:`atomgen.eval.load_extractor`, with
        ``weights`` for ``dinov2``/``clip``) with the CLIP model ``clip_weights`` (default
        :data:`~atomgen.eval.hub_features.CLIP_ID`, as ``atomgen eval``), and the reference images of
        ``reference`` (a folder of ``atomgen sample --prompts``; see :func:`reference_prompts`)."""
        from atomgen.eval import CLIPFeatures, extract_features, load_extractor

        features = load_extractor(extractor, device, weights=weights)
        same = isinstance(features, CLIPFeatures) and clip_weights in (None, weights)  # as atomgen eval
        clip = features if same else load_extractor("clip", device, weights=clip_weights)
        real = None
        if reference is not None:
            source, index = reference_prompts(reference, prompts)
            read = extract_features(source, {"features": features}, progress=False)["features"]
            real = (read.features.astype(np.float64), index)
        return cls(prompts, features, clip, distance_name(extractor), real)

    def index(self, prompts: Sequence[str]) -> np.ndarray:
        """Each image's position in the scorer's prompts."""
        unknown = sorted(set(prompts) - set(self.position))
        if unknown:
            raise ValueError(f"samples of prompts the scorer was not given: {unknown}")
        return np.array([self.position[p] for p in prompts], dtype=np.int64)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """The scores of ``images`` (in [0, 1]) sampled for ``prompts`` (one per image)."""
        from atomgen.eval import clip_scores, per_class_scores, prompt_scores

        index = self.index(prompts)
        features = features_of(self.extractor, images)
        embeds = features if self.clip is self.extractor else features_of(self.clip, images)
        clip = clip_scores(embeds, self.prompts, self.clip, index)
        table = prompt_scores(self.prompts, index, features=features, clip=clip).summary
        scores = {}
        if self.reference is not None:
            real, real_index = self.reference
            scores = per_class_scores(real, real_index, features, index)
        return scores | {
            "vendi": table["vendi"]["mean"],
            self.distance: table["cosine_distance"]["mean"],
            "clip_score": table["clip_score"]["mean"],
        }


def distance_name(extractor: str) -> str:
    """The name of the mean pairwise cosine distance within a prompt on ``extractor``'s features: the
    DINO distance on DINOv2's."""
    return "dino_distance" if extractor == "dinov2" else "cosine_distance"


def reference_prompts(reference: str | Path, prompts: Sequence[str]) -> tuple[Any, np.ndarray]:
    """The reference images of ``prompts``: a folder written by ``atomgen sample --prompts`` (its
    ``manifest.json``, read as ``atomgen eval`` reads it) holding at least ``PRDC_K + 1`` images of every
    prompt (images of other prompts are left out of the scores).

    Returns:
        the source, and each of its images' position in ``prompts`` (``-1`` for another prompt).

    Raises:
        ValueError: the folder has no prompts, lacks some of ``prompts``, or has too few images of one.
    """
    from atomgen.eval.folders import ManifestSource
    from atomgen.eval.per_class import PRDC_K
    from atomgen.eval.prompts import prompt_groups
    from atomgen.eval.sources import open_source

    source = open_source(reference)
    if not isinstance(source, ManifestSource) or source.prompts is None:
        raise ValueError(
            f"--real {reference}: reference images of a prompt pipeline are a folder written by "
            "`atomgen sample --prompts` (its manifest.json names each image's prompt); this one names none"
        )
    found, groups = prompt_groups(source.prompts, source.name)
    counts = dict(zip(found, np.bincount(groups, minlength=len(found)).tolist(), strict=True))
    missing = [p for p in prompts if p not in counts]
    if missing:
        raise ValueError(
            f"--real {reference} has no images of {len(missing)} of the prompts, e.g. {missing[0]!r}: "
            "sample the reference folder with the same --prompts file"
        )
    few = {p: counts[p] for p in prompts if counts[p] < PRDC_K + 1}
    if few:
        prompt, count = next(iter(few.items()))
        raise ValueError(
            f"--real {reference} has {count} images of {prompt!r}: per-prompt precision and recall use "
            f"{PRDC_K} nearest neighbours, so every prompt needs at least {PRDC_K + 1} reference images"
        )
    position = {prompt: i for i, prompt in enumerate(prompts)}
    return source, np.array([position.get(p, -1) for p in source.prompts], dtype=np.int64)


__all__ = [
    "ClassScorer",
    "PromptScorer",
    "check_real_classes",
    "distance_name",
    "features_of",
    "open_real",
    "real_labels",
    "reference_prompts",
    "subset",
]
