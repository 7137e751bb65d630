"""``atomgen eval`` logic: two folders of PNGs, a run directory with a saved pipeline, errors, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atomgen.eval import METRICS, add_eval_arguments, eval_command, open_source, run_eval


def _digit_pngs(folder: Path, start: int, count: int) -> Path:
    folder.mkdir(parents=True)
    images = open_source("digits").images[start : start + count, 0]
    for i, image in enumerate(images):
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_two_folders_of_pngs(tmp_path):
    real, fake = _digit_pngs(tmp_path / "real", 0, 40), _digit_pngs(tmp_path / "fake", 40, 30)
    report = run_eval(
        real, fake, list(METRICS), "digits", tmp_path / "out", device="cpu", batch_size=16, progress=False
    )
    metrics = report["metrics"]
    assert set(metrics) == {"fid", "kid", "prdc", "vendi", "lpips_diversity", "mode_coverage"}
    assert "digit-classifier-digits" in report["extractor"] and "resize to 8" in report["preprocessing"]
    assert metrics["fid"] > 0 and 1 < metrics["vendi"]["fake"] < 30
    assert 0 < metrics["lpips_diversity"]["fake"] < 1 and metrics["lpips_diversity"]["pairs"] == 435
    assert metrics["mode_coverage"]["num_modes"] == 10
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["metrics"]["fid"] == pytest.approx(metrics["fid"])
    markdown = (tmp_path / "out" / "report.md").read_text()
    for word in ("fid", "coverage", "lpips_diversity", "higher = more diverse", report["extractor"]):
        assert word in markdown


def test_same_folder_scores_like_itself(tmp_path):
    real = _digit_pngs(tmp_path / "real", 0, 30)
    report = run_eval(real, real, metrics=["fid", "prdc"], extractor="pixels", device="cpu", progress=False)
    assert report["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert report["metrics"]["prdc"]["coverage"] == 1.0 and report["extractor"] == "pixels"


def test_run_directory_with_a_saved_pipeline(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )  # fmt: skip
    run = tmp_path / "run"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(run / "atom")
    real = open_source("digits").images[:64]
    report = run_eval(
        real, run, ["fid", "vendi"], "pixels", tmp_path / "out", num_samples=12, num_inference_steps=2,
        device="cpu", batch_size=64, progress=False,
    )  # fmt: skip
    assert report["fake"]["images"] == 12 and "pipeline samples" in report["fake"]["source"]
    assert np.isfinite(report["metrics"]["fid"])
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(run / "baseline")
    with pytest.raises(ValueError, match="name one"):
        run_eval(real, run, metrics=["fid"], device="cpu", progress=False)


def test_too_few_images_are_clear_errors(tmp_path):
    real, fake = _digit_pngs(tmp_path / "real", 0, 20), _digit_pngs(tmp_path / "fake", 20, 4)
    with pytest.raises(ValueError, match=r"prdc \(k=5 neighbours\) needs at least 6 fake images, got 4"):
        run_eval(real, fake, metrics=["prdc"], device="cpu", progress=False)
    with pytest.raises(ValueError, match="mode_coverage needs grey digit images"):
        run_eval(
            torch.rand(8, 3, 40, 40), torch.rand(8, 3, 40, 40), metrics=["mode_coverage"], progress=False
        )
    with pytest.raises(ValueError, match="unknown metrics"):
        run_eval(real, fake, metrics=["is"], progress=False)


def test_command_line(tmp_path):
    real, fake = _digit_pngs(tmp_path / "real", 0, 12), _digit_pngs(tmp_path / "fake", 12, 12)
    parser = add_eval_arguments(argparse.ArgumentParser(prog="atomgen eval"))
    assert "examples:" in parser.format_help()
    args = parser.parse_args(
        ["--real", str(real), "--fake", str(fake), "--metrics", "fid", "vendi", "--out", str(tmp_path / "o"),
         "--device", "cpu", "--no-progress", "--extractor", "digits"]
    )  # fmt: skip
    report = eval_command(args)
    assert set(report["metrics"]) == {"fid", "vendi"} and (tmp_path / "o" / "report.md").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["--real", "a", "--fake", "b", "--metrics", "inception_score"])
