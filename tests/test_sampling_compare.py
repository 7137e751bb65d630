"""``atomgen compare`` end to end on a tiny class-conditional pipeline and the digits: the report's
intervals recomputed from its per-seed values, and a rerun that samples and scores nothing again."""

from __future__ import annotations

import json

import pytest
from diffusers import DDIMScheduler
from tiny import tiny_unet

from atomgen.benchmark.stats import front_gaps, grid_by_seed, paired_interval
from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.sampling.compare import CompareConfig, compare, feature_space


@pytest.mark.slow
def test_compare_end_to_end_and_its_intervals_from_the_per_seed_values(tmp_path):
    folder = tmp_path / "cfg"  # ten digit classes and the null label, 8×8 like the digits
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=11), DDIMScheduler(clip_sample=False)
    ).save_pretrained(folder)
    config = CompareConfig(
        str(folder), "digits", tmp_path / "out", scales=(1.0, 2.0), methods=("atom:50", "atom:200"), seeds=2,
        samples_per_class=6, steps=2, device="cpu", progress=False,
    )  # fmt: skip
    report = compare(config)

    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "report.png").is_file()
    w_star = report["benchmark_scale"]
    assert w_star in (1.0, 2.0) and [row["scale"] for row in report["grid"]] == [1.0, 2.0]
    reference = next(row for row in report["grid"] if row["scale"] == w_star)
    for row in report["methods"]:
        for metric in ("precision", "recall", "accuracy"):
            values, base = row[metric]["values"], reference[metric]["values"]
            assert len(values) == 2
            mean, low, high = paired_interval([a - b for a, b in zip(values, base, strict=True)])
            assert (row[metric]["diff"], row[metric]["low"], row[metric]["high"]) == pytest.approx(
                (mean, low, high)
            )
    # the front gaps from the per-seed values alone
    grid = {row["scale"]: [dict(zip(("precision", "recall", "accuracy"), v, strict=True)) for v in zip(
        row["precision"]["values"], row["recall"]["values"], row["accuracy"]["values"], strict=True)]
        for row in report["grid"]}  # fmt: skip
    for row in report["methods"]:
        rows = [dict(zip(("precision", "recall", "accuracy"), v, strict=True)) for v in zip(
            row["precision"]["values"], row["recall"]["values"], row["accuracy"]["values"], strict=True)]  # fmt: skip
        for axis, gap in front_gaps(grid_by_seed(grid), rows).items():
            assert report["front"][row["setting"]][axis]["gains"] == pytest.approx(gap.gains)
    assert report["chosen"]["atom"]["strength"] in (50, 200)

    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.png") if "samples" in p.parts}
    assert len(files) == (2 + 2) * 2 * 60  # (grid + methods) × seeds × 10 classes × 6
    again = compare(config)
    assert again["methods"] == report["methods"]
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())


def test_the_feature_space_is_dinov2_when_its_weights_are_at_hand(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert feature_space(None, None) == "classifier"  # an empty hub cache: the classifier's features
    assert feature_space(None, None, "prompt") == "dinov2"  # a prompt pipeline has no classifier
    assert feature_space(None, "some/folder") == "dinov2"
    assert feature_space("clip", "some/folder") == "clip"
    assert feature_space(None, None, "class", "mnist") == "classifier"  # a committed classifier's features
    # a transformers classifier: its logits are no feature space
    assert feature_space(None, None, "class", "google/vit-base-patch16-224") == "dinov2"
    # a hub cache holding facebook/dinov2-large, laid out as huggingface_hub writes it
    repo = tmp_path / "models--facebook--dinov2-large"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    assert feature_space(None, None) == "dinov2"
    with pytest.raises(ValueError, match="extractor must be one of"):
        feature_space("lpips", None)


@pytest.mark.slow
def test_compare_scores_on_dinov2_features(tmp_path):
    from tiny_vision import save_tiny_dinov2

    folder = tmp_path / "cfg"
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=11), DDIMScheduler(clip_sample=False)
    ).save_pretrained(folder)
    weights = save_tiny_dinov2(tmp_path / "dinov2")
    config = CompareConfig(
        str(folder), "digits", tmp_path / "out", scales=(1.0, 2.0), seeds=2, samples_per_class=6, steps=2,
        device="cpu", progress=False, extractor_weights=str(weights),
    )  # fmt: skip
    report = compare(config)
    assert report["extractor"] == "dinov2"
    (scores,) = (tmp_path / "out" / "scores").glob("dinov2-*")  # keyed by the real images and classifier
    assert (scores / "seed-1").is_dir()
    assert "DINOv2" in (tmp_path / "out" / "report.md").read_text()
