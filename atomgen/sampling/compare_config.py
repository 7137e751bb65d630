"""The options of ``atomgen compare`` (:class:`CompareConfig`, checked against the pipeline before anything
is sampled) and its settings (:class:`Setting`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("digits", "mnist5k", "fashion-mnist")  # the datasets whose classifier atomgen ships
EXTRACTORS = ("classifier", "dinov2", "clip", "inception")  # compare's feature spaces


@dataclass(frozen=True)
class CompareConfig:
    """The options of ``atomgen compare``.

    Args:
        pipeline: a class-conditional or prompt-conditioned pipeline: a folder, an atomgen run directory
            or a hub id.
        real: class pipelines: the real images, a dataset atomgen ships a classifier for
            (:data:`DATASETS`), a ``.npz`` with ``images`` and ``labels``, or a folder written by ``atomgen
            sample`` (its ``manifest.json`` names each image's class label); labels are the pipeline's
            class ids, and every class compared needs at least 6 real images. Prompt pipelines: ``None``,
            or reference images of every prompt, a folder written by ``atomgen sample --prompts``.
        out: the output folder (resumable).
        scales: the grid of guidance scales ``w``.
        methods: ``NAME:STRENGTH[,KEY=VALUE…]`` settings; a method's strengths form its sweep.
        seeds: sampling seeds ``0 … seeds − 1``.
        samples_per_class: class pipelines: images per class, per setting and seed.
        prompts: prompt pipelines: the prompts (distinct).
        per_prompt: prompt pipelines: images per prompt, per setting and seed (at least 2, the pairs of
            the diversity within a prompt; at least 6 with ``real``, as per-prompt precision and recall
            use 5 nearest neighbours).
        steps: denoising steps (``None``: the pipeline's default).
        extractor: the feature space of the scores: ``"classifier"`` (a committed classifier's, class
            pipelines only), ``"dinov2"``, ``"clip"`` or ``"inception"``; ``None``: ``dinov2`` for
            prompt pipelines, and for class pipelines when its weights are available offline
            (``extractor_weights`` or the hub cache) or the classifier is a transformers one, else
            ``classifier``.
        extractor_weights: a folder or hub id for ``dinov2``/``clip``.
        clip_weights: prompt pipelines: the CLIP model of the CLIP score, a folder or hub id (default
            ``atomgen eval``'s, :data:`~atomgen.eval.hub_features.CLIP_ID`).
        classifier: class pipelines: the judge of class accuracy, ``digits``/``mnist``/``fashion`` (the
            committed ones) or a transformers image classifier (folder or hub id) whose output index is
            the class label; ``None``: the dataset's own (required when ``real`` is not a dataset).
        real_limit: class pipelines: use the first ``real_limit`` real images (of a dataset, the fixed
            subset of that many that training's ``data.limit`` takes); ``None``: all.
        classes: class pipelines: the classes compared (``None``: all); the others' real images are
            left out.
        batch_size, dtype, device, call_options, trust_remote_code, allow_pickle, progress: as for
            ``atomgen sample``.
    """

    pipeline: str
    real: str | None
    out: Path
    scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    methods: tuple[str, ...] = ()
    seeds: int = 3
    samples_per_class: int = 50
    steps: int | None = None
    batch_size: int = 16
    dtype: str = "fp32"
    device: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True
    extractor: str | None = None
    extractor_weights: str | None = None
    call_options: dict[str, Any] = field(default_factory=dict)
    prompts: tuple[str, ...] | None = None
    per_prompt: int | None = None
    clip_weights: str | None = None
    classifier: str | None = None
    real_limit: int | None = None
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        from atomgen.eval.per_class import PRDC_K
        from atomgen.pipelines.methods import parse_method

        object.__setattr__(self, "out", Path(self.out))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
            if len(set(self.prompts)) != len(self.prompts):
                twice = next(p for p in self.prompts if self.prompts.count(p) > 1)
                raise ValueError(f"--prompts names {twice!r} twice: each prompt is one group of the scores")
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct guidance scales, at least one; got {self.scales}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.real_limit is not None and self.real_limit < 1:
            raise ValueError(f"--real-limit must be a positive number of images, got {self.real_limit}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            if not self.classes or len(set(self.classes)) != len(self.classes):
                raise ValueError(
                    f"--class-labels must name distinct classes, at least one; got {self.classes}"
                )
        if self.prompts is None and self.samples_per_class < PRDC_K + 1:
            raise ValueError(
                f"samples_per_class ≥ {PRDC_K + 1} (precision and recall use {PRDC_K} nearest neighbours "
                f"per class) needed, got {self.samples_per_class}"
            )
        for method in self.methods:
            if parse_method(method).scale is None:
                raise ValueError(f"--method {method!r} gives no strength: write NAME:STRENGTH, e.g. atom:0.1")

    def check(self, kind: str, pipeline: str) -> None:
        """The options against the pipeline's kind (``class``, ``prompt`` or ``unconditional``).

        Raises:
            ValueError: naming the option that does not fit the pipeline, and what to pass instead.
        """
        from atomgen.eval.hub_classifier import IMAGENET_CLASSIFIER_ID
        from atomgen.eval.per_class import PRDC_K

        if kind == "class":
            if self.prompts is not None or self.per_prompt is not None:
                raise ValueError(
                    f"{pipeline} is class-conditional: it takes class labels, not prompts; leave out --prompts "
                    "and --per-prompt (--samples-per-class sets the images per class)"
                )
            if self.real is None:
                raise ValueError(
                    f"{pipeline}: a class-conditional pipeline is scored against a dataset atomgen ships a "
                    f"classifier for ({', '.join(DATASETS)}) or against real images of its classes (a .npz "
                    "with 'images' and 'labels', or a folder written by `atomgen sample`): pass --real"
                )
            if self.classifier_name is None:
                raise ValueError(
                    f"--real {self.real}: class accuracy, the adherence axis, needs a classifier: pass "
                    "--classifier (digits, mnist or fashion, atomgen's own, or a transformers image "
                    "classifier, a folder or hub id whose output index is the class label, e.g. "
                    f"{IMAGENET_CLASSIFIER_ID} for an ImageNet DiT)"
                )
        elif kind == "prompt":
            given = {
                "--classifier": self.classifier,
                "--real-limit": self.real_limit,
                "--class-labels": self.classes,
            }
            if named := [flag for flag, value in given.items() if value is not None]:
                raise ValueError(
                    f"{', '.join(named)}: options of class-conditional pipelines; {pipeline} is conditioned "
                    "on text (its adherence axis is the CLIP score): leave them out"
                )
            if not self.prompts:
                raise ValueError(
                    f"{pipeline} is conditioned on text: pass --prompts FILE (one prompt a line) and "
                    "--per-prompt K" + ("; the file has no prompt" if self.prompts is not None else "")
                )
            if self.real in DATASETS:
                raise ValueError(
                    f"--real {self.real}: a dataset of class images, which a prompt pipeline is not scored "
                    "against; for reference images per prompt pass a folder written by `atomgen sample "
                    "--prompts` with the same prompts, or leave --real out"
                )
            least = PRDC_K + 1 if self.real is not None else 2
            if self.per_prompt is None or self.per_prompt < least:
                why = (
                    f"per-prompt precision and recall against --real use {PRDC_K} nearest neighbours"
                    if self.real is not None
                    else "the diversity within a prompt needs pairs of its images"
                )
                raise ValueError(f"--per-prompt must be at least {least} ({why}), got {self.per_prompt}")
        else:
            raise ValueError(
                f"compare needs a class-conditional or prompt-conditioned pipeline (guidance needs a condition "
                f"to follow); {pipeline} is {kind}: sample it with `atomgen sample`, score it with `atomgen eval`"
            )

    @property
    def classifier_name(self) -> str | None:
        """The judge of class accuracy: ``classifier``, else the dataset's own (``None`` for real images of
        one's own)."""
        from atomgen.eval.plan import CLASSIFIER_OF_DATASET

        return self.classifier or CLASSIFIER_OF_DATASET.get(str(self.real))


@dataclass(frozen=True)
class Setting:
    """One sampled setting: plain CFG at ``scale`` (``method`` None) or one method spec at ``scale``."""

    scale: float
    method: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method or 'cfg'} w={self.scale:g}"

    @property
    def folder(self) -> str:
        return re.sub(r"[^\w.=-]+", "_", self.name)


__all__ = ["DATASETS", "EXTRACTORS", "CompareConfig", "Setting"]
