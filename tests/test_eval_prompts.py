"""Text-to-image scores from a sample manifest: the CLIP score by its definition, diversity within each
prompt, the per-prompt table, and the errors (no prompts, one image per prompt)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vision import CLIP_SIDE, save_tiny_clip, save_tiny_dinov2

from atomgen.eval import (
    LPIPSFeatures,
    add_eval_arguments,
    eval_command,
    load_extractor,
    lpips_diversity,
    mean_cosine_distance,
    prompt_diversity,
    run_eval,
    vendi,
)
from atomgen.eval.hub_features import CLIP_MEAN, CLIP_STD

PROMPTS = ["a dog", "a dog", "a dog", "a red cat", "a red cat", "a red cat", "a red cat"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny_clip(root / "clip"), save_tiny_dinov2(root / "dinov2")


def _manifest(folder, prompts, side=CLIP_SIDE, seed=0):
    """What `atomgen sample` writes: images/NNNNNN.png and manifest.json."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i, prompt in enumerate(prompts):
        Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)).save(
            folder / f"images/{i:06d}.png"
        )
        entries.append(
            {"file": f"images/{i:06d}.png", "index": i, "batch": 0, "class_label": None, "prompt": prompt}
        )
    manifest = {"format": "atomgen-samples/1", "pipeline": {"source": "tiny", "class": "X", "config_hash": ""},
                "settings": {}, "versions": {}, "images": entries}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _images(folder, count) -> torch.Tensor:
    arrays = [np.asarray(Image.open(folder / f"images/{i:06d}.png")) for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _clip_by_hand(clip_folder, images, prompts) -> np.ndarray:
    """100 × max(cos, 0) of CLIPModel's projected embeddings (transformers' own forward and tokenizer)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_folder)
    pixels = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    image, text = (
        getattr(out, "pooler_output", out).double().numpy() for out in (image, text)
    )  # transformers 5
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return 100 * np.maximum((image * text).sum(1), 0)


def test_clip_score_is_the_definition(tmp_path, models):
    clip_folder, _ = models
    folder = _manifest(tmp_path / "out", PROMPTS)
    report = run_eval(None, folder, ["clip_score"], clip_weights=clip_folder, device="cpu", progress=False)
    expected = _clip_by_hand(clip_folder, _images(folder, len(PROMPTS)), PROMPTS)
    assert (expected > 0).any()  # not a comparison of zeros
    summary = report["metrics"]["prompts"]["summary"]["clip_score"]
    assert summary["mean"] == pytest.approx(expected.mean(), abs=1e-5)
    rows = report["metrics"]["prompts"]["rows"]
    assert rows[0]["clip_score"] == pytest.approx(expected[:3].mean(), abs=1e-5)
    assert rows[1]["clip_score"] == pytest.approx(expected[3:].mean(), abs=1e-5)
    assert "real" not in report and report["clip"]["name"].startswith("clip ViT-16d/8 (")


def test_clip_score_equals_torchmetrics_where_it_runs(tmp_path, models):
    clip_folder, _ = models
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
    except ImportError:
        pytest.skip(
            "torchmetrics is not installed (and 1.9 fails on transformers 5: get_image_features returns an output object)"
        )
    from transformers import CLIPModel, CLIPProcessor

    folder = _manifest(tmp_path / "out", PROMPTS)
    images = _images(folder, len(PROMPTS))
    model, processor = CLIPModel.from_pretrained(clip_folder), CLIPProcessor.from_pretrained(clip_folder)
    try:
        metric = CLIPScore(model_name_or_path=lambda: (model, processor))
        value = float(metric((images * 255).to(torch.uint8), PROMPTS))
    except (TypeError, AttributeError) as error:
        pytest.skip(f"this torchmetrics does not run on this transformers ({error})")
    report = run_eval(None, folder, ["clip_score"], clip_weights=clip_folder, device="cpu", progress=False)
    assert report["metrics"]["prompts"]["summary"]["clip_score"]["mean"] == pytest.approx(value, abs=1e-4)


def test_prompt_diversity_table_and_cli(tmp_path, models):
    clip_folder, dinov2_folder = models
    prompts = [*PROMPTS, "a lonely fox"]  # the last prompt has one image
    folder = _manifest(tmp_path / "out", prompts)
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--fake", str(folder), "--extractor", "dinov2", "--extractor-weights", str(dinov2_folder),
         "--clip-weights", str(clip_folder), "--out", str(tmp_path / "report"), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    report = eval_command(args)
    prompt_report = report["metrics"]["prompts"]
    assert [row["prompt"] for row in prompt_report["rows"]] == ["a dog", "a red cat", "a lonely fox"]
    fox = prompt_report["rows"][2]
    assert fox["vendi"] is None and fox["lpips"] is None and fox["cosine_distance"] is None
    assert prompt_report["undefined"] == ["a lonely fox"]
    # by hand: DINOv2 features and LPIPS of each prompt's images
    extractor = load_extractor("dinov2", "cpu", weights=dinov2_folder)
    images = _images(folder, len(prompts))
    with torch.no_grad():
        features = extractor(images).double().numpy()
    lpips = LPIPSFeatures().fit_to(CLIP_SIDE)
    for row, members in zip(prompt_report["rows"], (slice(0, 3), slice(3, 7)), strict=False):
        assert row["vendi"] == pytest.approx(vendi(features[members]), rel=1e-6)
        assert row["cosine_distance"] == pytest.approx(mean_cosine_distance(features[members]), rel=1e-6)
        by_hand = lpips_diversity(images[members], extractor=lpips, progress=False).mean
        assert row["lpips"] == pytest.approx(by_hand, rel=1e-6)
    summary = prompt_report["summary"]
    values = [prompt_report["rows"][i]["vendi"] for i in (0, 1)]
    assert summary["vendi"]["mean"] == pytest.approx(np.mean(values)) and summary["vendi"]["count"] == 2
    assert summary["vendi"]["std"] == pytest.approx(np.std(values, ddof=1))
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Per prompt" in markdown and "| a lonely fox | 1 |" in markdown
    assert "undefined (1 image)" in markdown and "prompt_vendi" in markdown and "clip_score" in markdown


def test_errors_without_prompts_and_for_single_images(tmp_path, models):
    clip_folder, dinov2_folder = models
    folder = _manifest(tmp_path / "none", [None, None, None])
    with pytest.raises(ValueError, match="has no prompts"):
        run_eval(None, folder, ["clip_score"], clip_weights=clip_folder, device="cpu", progress=False)
    with pytest.raises(ValueError, match="diversity within a prompt is undefined for a single image"):
        prompt_diversity(np.ones((1, 4)), "a dog")
    singles = _manifest(tmp_path / "singles", ["a dog", "a cat"])
    with pytest.raises(ValueError, match="every prompt has a single image"):
        run_eval(
            None, singles, ["prompt_diversity"], "dinov2", extractor_weights=dinov2_folder, device="cpu",
            progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="compare with real images: pass --real"):
        run_eval(None, singles, ["fid"], device="cpu", progress=False)
