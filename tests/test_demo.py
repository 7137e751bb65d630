"""The demo end to end at tiny sizes, the digits loader, and the command line."""

import json
import math

import pytest
import torch
from PIL import Image

from atomgen.cli import main
from atomgen.data import load_digits_images
from atomgen.demo import DemoConfig, run_demo

TINY = {
    "steps": 3,
    "batch_size": 8,
    "num_samples": 4,
    "num_inference_steps": 2,
    "block_out_channels": (8, 16),
}


def test_digits_loader():
    data = load_digits_images()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    assert data.images.min() == -1 and data.images.max() == 1
    assert data.labels.shape == (1797,) and set(data.labels.tolist()) == set(range(10))
    subset = load_digits_images(classes=[0, 1])
    assert set(subset.labels.tolist()) == {0, 1} and len(subset) < len(data)
    with pytest.raises(ValueError, match="subset of the digits"):
        load_digits_images(classes=[10])


def test_run_demo_writes_everything(tmp_path):
    summary = run_demo(tmp_path, progress=False, seed=1, weight=0.5, mode="repulsive", **TINY)

    # 4 samples → a 2×2 grid of 8×8 digits upscaled ×5 to 40 px, 2 px gaps around and between
    side = 2 * 40 + 3 * 2
    for name in ("samples_baseline.png", "samples_atom.png", "importance_atom.png"):
        with Image.open(tmp_path / name) as image:
            image.load()
            assert image.size == (side, side) and image.mode == "RGB"

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["config"]["steps"] == 3 and on_disk["config"]["weight"] == 0.5
    assert json.loads((tmp_path / "config.json").read_text()) == on_disk["config"]
    common = {
        "task_loss_final",
        "task_loss_mean",
        "atom_distance",
        "pixel_distance",
        "train_seconds",
        "wall_seconds",
    }
    atom_only = {"separation_loss_final", "separation_loss_mean", "atom_loss_final", "importance_mean"}
    assert common <= on_disk["models"]["baseline"].keys()
    assert common | atom_only <= on_disk["models"]["atom"].keys()
    for stats in on_disk["models"].values():
        assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
        assert 0 < stats["atom_distance"] <= 2.01  # unit sphere, softened by ε = 0.1
    assert (tmp_path / "baseline" / "model_index.json").exists()
    assert (tmp_path / "atom" / "separation" / "config.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_same_seed_same_start(tmp_path):
    """Weight 0 makes the atom run an exact replay of the baseline (same weights, batches and noise)."""
    summary = run_demo(tmp_path, progress=False, weight=0.0, **TINY)
    baseline, atom = summary["models"]["baseline"], summary["models"]["atom"]
    assert baseline["task_loss_mean"] == atom["task_loss_mean"]
    assert baseline["pixel_distance"] == atom["pixel_distance"]


def test_config_validation():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="num_samples must be at least 2"):
        DemoConfig(num_samples=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        DemoConfig(mode="attractive")
    with pytest.raises(ValueError, match="weight must be a finite number"):
        DemoConfig(weight=-1.0)
    with pytest.raises(TypeError, match="unknown settings"):
        run_demo("unused", stpes=3)


def test_cli_help_and_user_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    assert "(default: 128)" in capsys.readouterr().out

    bad = (
        ["demo", "--bogus"],
        ["demo", "--steps", "0"],
        ["demo", "--weight", "abc"],
        ["demo", "--mode", "x"],
        [],
    )
    for argv in bad:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv

    (tmp_path / "taken.txt").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_cli_quick_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--quick", "--out", str(out), "--steps", "2", "--num-inference-steps", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 2 and config["batch_size"] == DemoConfig.quick().batch_size
    assert "wrote" in capsys.readouterr().out
