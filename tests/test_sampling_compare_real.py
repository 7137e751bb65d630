"""``atomgen compare`` on a class-conditional pipeline against real images of one's own (a ``.npz`` with
labels, a folder of ``atomgen sample``) with a transformers classifier as the judge of class accuracy:
accuracy and per-class scores recomputed independently, the cache keyed by the real images and the
classifier, and the errors before anything is sampled."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from test_eval_hub_classifier import save_tiny_vit_classifier
from tiny import tiny_unet
from tiny_vision import save_tiny_dinov2

from atomgen.benchmark.scoring import open_real, real_labels, subset
from atomgen.cli import main
from atomgen.data import load_dataset
from atomgen.eval import classify, load_extractor, load_hub_classifier, open_source, per_class_scores
from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.sampling import SampleConfig, sample
from atomgen.sampling.compare import CompareConfig, Setting, _scores_folder, compare, read_samples

CLASSES = (0, 3, 7)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ten-class 8×8 pipeline (and the null label), a tiny ViT classifier, tiny DINOv2 weights."""
    root = tmp_path_factory.mktemp("models")
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=11), DDIMScheduler(clip_sample=False)
    ).save_pretrained(root / "cfg")
    return (
        str(root / "cfg"),
        str(save_tiny_vit_classifier(root / "vit")),
        str(save_tiny_dinov2(root / "dinov2")),
    )


def _real(path, count: int = 240, labels: np.ndarray | None = None):
    """The first ``count`` digits as a uint8 ``.npz`` with their labels."""
    data = load_dataset("digits")
    images = ((data.images[:count] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    np.savez(path, images=images, labels=data.labels[:count].numpy() if labels is None else labels)
    return path


def _config(models, real, out, **options) -> CompareConfig:
    pipeline, vit, dinov2 = models
    settings = dict(
        scales=(1.0, 2.0), seeds=2, samples_per_class=6, steps=2, device="cpu", progress=False,
        classifier=vit, extractor_weights=dinov2, classes=CLASSES,
    )  # fmt: skip
    return CompareConfig(pipeline, str(real), out, **(settings | options))


def test_compare_against_an_npz_with_a_transformers_classifier(tmp_path, models):
    pipeline, vit, dinov2 = models
    real, out = _real(tmp_path / "real.npz"), tmp_path / "out"
    command = ["compare", pipeline, "--real", str(real), "--classifier", vit, "--real-limit", "200", "--out"]
    command += [str(out), "--class-labels", "0,3,7", "--extractor-weights", dinov2, "--scales", "1", "2"]
    command += ["--method", "atom:50", "--seeds", "2", "--samples-per-class", "6"]
    assert main([*command, "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["extractor"] == "dinov2" and report["classifier"] == load_hub_classifier(vit).name
    labels = np.load(real)["labels"][:200]
    assert report["real_images"] == int(np.isin(labels, CLASSES).sum())
    # accuracy: the tiny ViT's argmax against the requested label, seed by seed, from the sample folders
    classifier = load_hub_classifier(vit)
    predictions = set()
    for row in report["grid"]:
        for seed, value in enumerate(row["accuracy"]["values"]):
            source = open_source(out / "samples" / f"seed-{seed}" / Setting(row["scale"]).folder)
            predicted = classify(source, classifier)
            predictions |= set(predicted.tolist())
            assert sorted(set(source.labels.tolist())) == list(CLASSES)
            assert value == pytest.approx(float((predicted == source.labels).mean()))
    assert len(predictions) > 1  # a judge that tells images apart
    # per-class scores against the first 200 real images of the classes compared only, on DINOv2 features
    extractor = load_extractor("dinov2", "cpu", weights=dinov2)
    keep = np.isin(labels, CLASSES)
    images = open_source(real).images[:200][keep]
    real_features = extractor(images).double().numpy()
    samples, asked = read_samples(out / "samples" / "seed-1" / Setting(report["grid"][0]["scale"]).folder)
    expected = per_class_scores(real_features, labels[keep], extractor(samples).double().numpy(), asked)
    for metric in ("precision", "recall", "density", "coverage"):
        assert report["grid"][0][metric]["values"][1] == pytest.approx(expected[metric], abs=1e-9)
    assert len(report["methods"][0]["accuracy"]["values"]) == 2
    markdown = (out / "report.md").read_text()
    assert "vit image classifier" in markdown and "of classes 0, 3, 7" in markdown


def test_the_scores_are_keyed_by_the_real_images_and_the_classifier(tmp_path, models):
    real = _real(tmp_path / "real.npz")
    base = _scores_folder(_config(models, real, tmp_path / "out"), "dinov2")
    assert base.parent == tmp_path / "out" / "scores" and base.name.startswith("dinov2-")
    assert _scores_folder(_config(models, real, tmp_path / "out"), "dinov2") == base
    other = _real(tmp_path / "other.npz", 120)
    for changed in (
        _config(models, other, tmp_path / "out"),
        _config(models, real, tmp_path / "out", real_limit=100),
        _config(models, real, tmp_path / "out", classifier="mnist"),
        _config(models, real, tmp_path / "out", extractor_weights="facebook/dinov2-small"),
    ):
        assert _scores_folder(changed, "dinov2") != base
    digits = CompareConfig(models[0], "digits", tmp_path / "out")
    assert _scores_folder(digits, "classifier") != _scores_folder(
        CompareConfig(models[0], "digits", tmp_path / "out", real_limit=500), "classifier"
    )


def test_the_errors_come_before_anything_is_sampled(tmp_path, models):
    pipeline = models[0]
    real, out = _real(tmp_path / "real.npz"), tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"class accuracy, the adherence axis, needs a classifier: pass --classifier"
    ):
        compare(_config(models, real, out, classifier=None))
    wrong = _real(tmp_path / "wrong.npz", labels=load_dataset("digits").labels[:240].numpy() + 1)  # 1…10
    with pytest.raises(ValueError, match=r"labels outside the pipeline's classes 0…9: \[10\]"):
        compare(_config(models, wrong, out))
    with pytest.raises(
        ValueError, match=r"too few images of 3 of the classes compared \(class 0: 3, .*at least 6"
    ):
        compare(_config(models, real, out, real_limit=25))
    with pytest.raises(
        ValueError, match="--extractor classifier: the features of atomgen's committed classifiers"
    ):
        compare(_config(models, real, out, extractor="classifier"))
    with pytest.raises(ValueError, match=r"--class-labels \[12\]: out of range"):
        compare(_config(models, real, out, classes=(3, 12)))
    assert not out.exists()
    # a folder of `atomgen sample` as the real images: class 8 has 5 of the 6 images it needs
    folder = tmp_path / "reference"
    sample(SampleConfig(pipeline, folder, num_samples=23, class_labels=(0, 3, 7, 8), steps=1, device="cpu",
                        progress=False))  # fmt: skip
    with pytest.raises(ValueError, match=r"too few images of 1 of the classes compared \(class 8: 5\)"):
        compare(_config(models, folder, out, classes=(0, 3, 7, 8)))
    # a twelve-class pipeline judged by the ten-class ViT: class 11 has no output
    twelve = tmp_path / "twelve"
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=13), DDIMScheduler(clip_sample=False)
    ).save_pretrained(twelve)
    labels = load_dataset("digits").labels[:240].numpy()
    eleven = _real(tmp_path / "eleven.npz", labels=np.where(labels == 9, 11, labels))
    with pytest.raises(ValueError, match=r"has 10 outputs, but class 11 is compared: its output index"):
        compare(replace(_config(models, eleven, out, classes=(3, 11)), pipeline=str(twelve)))
    assert not out.exists()
    # a .npz without labels, and the command line's usage error
    np.savez(tmp_path / "bare.npz", images=np.zeros((8, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="no class labels"):
        compare(_config(models, tmp_path / "bare.npz", out))
    with pytest.raises(SystemExit):
        main(["compare", pipeline, "--real", str(real), "--out", str(out), "--no-progress"])


def test_the_real_images_are_the_first_n_with_their_labels(tmp_path, models):
    folder = tmp_path / "reference"
    sample(SampleConfig(models[0], folder, num_samples=12, class_labels=(0, 3), steps=1, device="cpu",
                        progress=False))  # fmt: skip
    full = open_source(folder)
    first = open_real(folder, limit=8)
    assert len(first) == 8 and first.labels.tolist() == full.labels[:8].tolist() == [0] * 6 + [3] * 2
    assert torch.equal(torch.cat(list(first.batches(3))), torch.cat(list(full.batches(100)))[:8])
    picked = subset(full, np.array([1, 7, 11]))
    assert picked.labels.tolist() == [0, 3, 3]
    assert torch.equal(torch.cat(list(picked.batches(2))), torch.cat(list(full.batches(100)))[[1, 7, 11]])
    assert real_labels(folder, 8).tolist() == first.labels.tolist()
    real = _real(tmp_path / "real.npz")
    assert open_real(real, limit=50).labels.tolist() == np.load(real)["labels"][:50].tolist()
    assert real_labels(real, 50).tolist() == open_real(real, limit=50).labels.tolist()  # the images unread
    assert open_real("digits", limit=100).labels.tolist() == load_dataset("digits", limit=100).labels.tolist()
