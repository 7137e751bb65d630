"""``atomgen compare`` on a tiny Stable Diffusion pipeline: the CLIP score as the adherence axis, the
spread within a prompt as the gain without reference images, precision and recall per prompt with them,
every number checked against ``atomgen eval`` or recomputed by hand; and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from tiny import tiny_unet
from tiny_sd import tiny_stable_diffusion
from tiny_vision import save_tiny_clip, save_tiny_dinov2

from atomgen.benchmark.stats import PROMPT_AXES, front_gaps, grid_by_seed, paired_interval
from atomgen.cli import main
from atomgen.eval import fid, load_extractor, prdc, run_eval
from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.sampling import SampleConfig, sample
from atomgen.sampling.compare import CompareConfig, Setting, compare

PROMPTS = ("a cat", "a dog")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny SD pipeline's folder, and tiny CLIP and DINOv2 weights folders."""
    root = tmp_path_factory.mktemp("models")
    tiny_stable_diffusion(root)
    return str(root / "sd"), str(save_tiny_clip(root / "clip")), str(save_tiny_dinov2(root / "dinov2"))


def _config(models, out, **options) -> CompareConfig:
    sd, clip, dinov2 = models
    settings = dict(
        scales=(1.0, 2.0), methods=("atom:0.1",), seeds=2, prompts=PROMPTS, per_prompt=2, steps=2,
        device="cpu", progress=False, extractor_weights=dinov2, clip_weights=clip,
    )  # fmt: skip
    return CompareConfig(sd, options.pop("real", None), out, **(settings | options))


def _reference(models, folder, prompts=(*PROMPTS, "a cow"), per_prompt=6):
    """Reference images: a sample folder of the same tiny pipeline, other noise (seed 7), a third prompt."""
    sample(SampleConfig(models[0], folder, prompts=prompts, per_prompt=per_prompt, steps=2, seed=7,
                        device="cpu", progress=False))  # fmt: skip
    return folder


def _rows(row: dict, metrics) -> list[dict[str, float]]:
    """A report row's per-seed values, one dict a seed."""
    columns = [row[m]["values"] for m in metrics]
    return [dict(zip(metrics, values, strict=True)) for values in zip(*columns, strict=True)]


def test_compare_without_reference_images_fronts_the_clip_score_and_agrees_with_eval(tmp_path, models):
    sd, clip, dinov2 = models
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    out = tmp_path / "out"
    main(["compare", sd, "--prompts", str(tmp_path / "prompts.txt"), "--per-prompt", "2", "--out", str(out),
          "--scales", "1", "2", "--method", "atom:0.1", "--seeds", "2", "--steps", "2", "--device", "cpu",
          "--extractor-weights", dinov2, "--clip-weights", clip, "--no-progress"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())

    assert report["axes"] == ["clip_score"] and report["gain"] == "dino_distance"
    assert report["config"]["prompts"] == list(PROMPTS) and report["extractor"] == "dinov2"
    metrics = ("clip_score", "dino_distance", "vendi")
    for row in report["grid"] + report["methods"]:
        assert set(metrics) <= set(row) and not {"recall", "precision", "accuracy"} & set(row)
        assert all(len(row[m]["values"]) == 2 for m in metrics)
    # each setting's scores are atomgen eval's on its sample folder
    for row in report["grid"] + report["methods"]:
        for seed in range(2):
            setting = Setting(row["scale"], None if row["method"] == "cfg" else row["method"])
            folder = out / "samples" / f"seed-{seed}" / setting.folder
            evaluated = run_eval(
                None, folder, ["clip_score", "prompt_diversity"], "dinov2", extractor_weights=dinov2,
                clip_weights=clip, device="cpu", progress=False,
            )["metrics"]["prompts"]["summary"]  # fmt: skip
            assert row["clip_score"]["values"][seed] == pytest.approx(
                evaluated["clip_score"]["mean"], abs=1e-4
            )
            assert row["dino_distance"]["values"][seed] == pytest.approx(
                evaluated["cosine_distance"]["mean"], rel=1e-4, abs=1e-9
            )
            assert row["vendi"]["values"][seed] == pytest.approx(evaluated["vendi"]["mean"], rel=1e-5)
    assert report["grid"][0]["clip_score"]["mean"] > 0  # not a comparison of zeros
    # the paired differences and the one-axis front from the per-seed values alone
    reference = next(row for row in report["grid"] if row["scale"] == report["benchmark_scale"])
    (method,) = report["methods"]
    for metric in metrics:
        diffs = [a - b for a, b in zip(method[metric]["values"], reference[metric]["values"], strict=True)]
        assert method[metric]["diff"] == pytest.approx(paired_interval(diffs).mean)
    grid = {row["scale"]: _rows(row, metrics) for row in report["grid"]}
    gaps = front_gaps(grid_by_seed(grid), _rows(method, metrics), ("clip_score",), "dino_distance")
    front = report["front"][method["setting"]]
    assert set(front) == {"clip_score"} and front["clip_score"]["other"] is None
    assert front["clip_score"]["gains"] == pytest.approx(gaps["clip_score"].gains)
    markdown = (out / "report.md").read_text()
    assert "| setting | vendi | dino_distance | clip_score |" in markdown
    assert (
        "spread of the images within a prompt" in markdown and "not diversity against a reference" in markdown
    )
    assert (out / "report.png").is_file()

    files = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.png")}
    assert len(files) == (2 + 1) * 2 * 2 * 2  # (grid + method) × seeds × prompts × per prompt
    assert compare(_config(models, out))["methods"] == report["methods"]  # a rerun: nothing sampled again
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())


def test_compare_against_reference_images_has_precision_and_recall_per_prompt(tmp_path, models):
    dinov2 = models[2]
    real = _reference(models, tmp_path / "reference")
    report = compare(_config(models, tmp_path / "out", real=str(real), per_prompt=6))

    assert report["axes"] == list(PROMPT_AXES) and report["gain"] == "recall"
    for row in report["grid"] + report["methods"]:
        assert {"fid", "precision", "recall", "density", "coverage", "clip_score", "dino_distance"} <= set(
            row
        )
    # every setting's per-prompt scores by hand: each prompt's samples against that prompt's reference
    # images on the DINOv2 features, averaged over the two prompts (the reference's "a cow" unused)
    extractor = load_extractor("dinov2", "cpu", weights=dinov2)

    def features(folder) -> tuple[np.ndarray, list[str]]:
        entries = json.loads((folder / "manifest.json").read_text())["images"]
        images = np.stack([np.asarray(Image.open(folder / e["file"])) for e in entries])
        with torch.no_grad():
            x = extractor(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).double().numpy()
        return x, [e["prompt"] for e in entries]

    real_x, real_prompts = features(real)
    densities = []
    for row in report["grid"] + report["methods"]:
        setting = Setting(row["scale"], None if row["method"] == "cfg" else row["method"])
        for seed in range(2):
            fake_x, fake_prompts = features(tmp_path / "out" / "samples" / f"seed-{seed}" / setting.folder)
            pairs = [
                (real_x[[p == prompt for p in real_prompts]], fake_x[[p == prompt for p in fake_prompts]])
                for prompt in PROMPTS
            ]
            by_prompt = [prdc(theirs, ours, k=5) for theirs, ours in pairs]
            for metric in ("precision", "recall", "density", "coverage"):
                expected = np.mean([getattr(scores, metric) for scores in by_prompt])
                assert row[metric]["values"][seed] == pytest.approx(expected, abs=1e-6)
            expected_fid = np.mean([fid(theirs, ours) for theirs, ours in pairs])
            assert row["fid"]["values"][seed] == pytest.approx(expected_fid, rel=1e-4)
            densities.append(row["density"]["values"][seed])
    assert len(set(densities)) > 1  # the scores vary: the comparison is not of constants
    # the two-axis front, (precision, clip_score) with recall, from the per-seed values
    metrics = ("precision", "clip_score", "recall")
    grid = {row["scale"]: _rows(row, metrics) for row in report["grid"]}
    (method,) = report["methods"]
    gaps = front_gaps(grid_by_seed(grid), _rows(method, metrics), PROMPT_AXES)
    front = report["front"][method["setting"]]
    assert set(front) == {"precision", "clip_score"} and front["precision"]["other"] == "clip_score"
    for axis in PROMPT_AXES:
        assert front[axis]["gains"] == pytest.approx(gaps[axis].gains)
        assert front[axis]["other_diffs"] == pytest.approx(gaps[axis].other_diffs)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "recall gain" in markdown and "No reference images" not in markdown


def test_the_errors_name_what_was_wrong(tmp_path, models):
    sd = models[0]
    classes = tmp_path / "cfg"
    AtomClassConditionalPipeline(
        tiny_unet(num_class_embeds=11), DDIMScheduler(clip_sample=False)
    ).save_pretrained(classes)
    with pytest.raises(ValueError, match="class-conditional: it takes class labels, not prompts"):
        compare(CompareConfig(str(classes), "digits", tmp_path / "a", prompts=PROMPTS, per_prompt=2))
    with pytest.raises(ValueError, match="class-conditional pipeline is scored against a dataset"):
        compare(CompareConfig(str(classes), None, tmp_path / "b"))
    with pytest.raises(ValueError, match="conditioned on text: pass --prompts FILE"):
        compare(CompareConfig(sd, None, tmp_path / "c"))
    with pytest.raises(ValueError, match="--real mnist5k: a dataset of class images"):
        compare(_config(models, tmp_path / "d", real="mnist5k", per_prompt=6))
    with pytest.raises(ValueError, match=r"--per-prompt must be at least 2 \(the diversity within a prompt"):
        compare(_config(models, tmp_path / "e", per_prompt=1))
    with pytest.raises(ValueError, match="--extractor classifier: the dataset classifier's features"):
        compare(_config(models, tmp_path / "f", extractor="classifier"))
    with pytest.raises(ValueError, match="names 'a cat' twice"):
        _config(models, tmp_path / "g", prompts=("a cat", "a dog", "a cat"))
    # a reference folder without one of the prompts, or too few of one: refused before anything is sampled
    cats = _reference(models, tmp_path / "cats", prompts=("a cat",))
    with pytest.raises(ValueError, match=r"has no images of 1 of the prompts, e\.g\. 'a dog'"):
        compare(_config(models, tmp_path / "h", real=str(cats), per_prompt=6))
    with pytest.raises(
        ValueError, match=r"--per-prompt must be at least 6 \(per-prompt precision and recall"
    ):
        compare(_config(models, tmp_path / "h", real=str(cats), per_prompt=2))
    few = _reference(models, tmp_path / "few", per_prompt=3)
    with pytest.raises(ValueError, match=r"has 3 images of 'a cat'.* at least 6 reference images"):
        compare(_config(models, tmp_path / "h", real=str(few), per_prompt=6))
    assert not (tmp_path / "h").exists()
    # the command line says it as a usage error
    with pytest.raises(SystemExit):
        main(["compare", sd, "--out", str(tmp_path / "i"), "--real", "digits", "--no-progress"])
