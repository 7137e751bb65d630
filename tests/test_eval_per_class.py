"""``atomgen eval`` on class-conditional models: balanced classes, per-class scores, class accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import DDIMScheduler
from tiny import tiny_unet

from atomgen.eval import open_source, per_class_scores, run_eval
from atomgen.eval.sources import RunSampling, balanced_labels
from atomgen.pipelines import AtomClassConditionalPipeline


def _save_class_pipeline(folder):
    """A tiny 10-class 8×8 grey pipeline, saved where ``atomgen train`` saves one (``<run>/pipeline``)."""
    pipe = AtomClassConditionalPipeline(tiny_unet(num_class_embeds=11), DDIMScheduler(num_train_timesteps=20))
    pipe.save_pretrained(folder / "pipeline")
    return folder


def test_balanced_labels_round_up_to_equal_classes():
    assert np.bincount(balanced_labels(25, 10)).tolist() == [3] * 10
    assert balanced_labels(20, 10).tolist() == np.repeat(np.arange(10), 2).tolist()
    with pytest.raises(ValueError, match="num_classes"):
        balanced_labels(4, 0)


def test_class_conditional_run_is_scored_per_class(tmp_path):
    run = _save_class_pipeline(tmp_path / "run")
    report = run_eval(
        "digits", run, extractor="digits", out_dir=tmp_path / "out", num_samples=60, num_inference_steps=2,
        guidance_scale=2.0, device="cpu", batch_size=32, progress=False,
    )  # fmt: skip
    metrics = report["metrics"]
    assert report["fake"]["images"] == 60 and "6 per class" in report["fake"]["source"]
    assert {"fid", "prdc", "per_class", "class_accuracy", "mode_coverage"} <= set(metrics)
    per_class = metrics["per_class"]
    assert per_class["classes"] == 10 and per_class["samples_per_class"] == {"min": 6, "max": 6}
    assert set(per_class["scores"]) == {"precision", "recall", "density", "coverage", "fid", "vendi", "lpips"}
    assert 0.0 <= metrics["class_accuracy"]["accuracy"] <= 1.0
    assert "digits" in metrics["class_accuracy"]["classifier"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "class_accuracy" in markdown and "per class, mean over 10 classes" in markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]["per_class"]["classes"] == 10


def test_per_class_scores_match_the_benchmark_computation(tmp_path):
    """The run's per-class numbers are per_class_scores on the same features and labels (bench/cfg.py's
    computation), with the LPIPS of each class from the shared pass."""
    from atomgen.eval import LPIPSFeatures, load_extractor, lpips_diversity
    from atomgen.eval.sources import draw_samples

    run = _save_class_pipeline(tmp_path / "run")
    report = run_eval(
        "digits", run / "pipeline", ["per_class"], "digits", num_samples=60, num_inference_steps=2,
        device="cpu", progress=False,
    )  # fmt: skip
    pipe = AtomClassConditionalPipeline.from_pretrained(run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    sampling = RunSampling(60, 64, 2)
    labels = balanced_labels(60, 10)
    import torch

    generator = torch.Generator().manual_seed(sampling.seed)
    images = draw_samples(pipe, 60, 64, generator, class_labels=labels, num_inference_steps=2)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    extractor = load_extractor("digits", "cpu")
    real = open_source("digits")
    with torch.no_grad():
        fake_f = extractor(images).numpy()
        real_f = torch.cat([extractor(b) for b in real.batches(512)]).numpy()
    lpips = LPIPSFeatures().fit_to(8)
    expected = per_class_scores(real_f, real.labels, fake_f, labels)
    expected_lpips = np.mean(
        [lpips_diversity(images[labels == c], extractor=lpips, progress=False).mean for c in range(10)]
    )
    scores = report["metrics"]["per_class"]["scores"]
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-5), key
    assert scores["lpips"] == pytest.approx(expected_lpips, rel=1e-5)


def test_per_class_needs_labels():
    with pytest.raises(ValueError, match="need the class of every sample"):
        run_eval(
            "digits", open_source("digits").images[:40], ["per_class"], "digits", device="cpu", progress=False
        )
