"""``atomgen demo`` end to end at tiny sizes, its report, and the command line."""

import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from atomgen import DispersiveLoss
from atomgen.cli import build_parser, main
from atomgen.data import load_digits_images
from atomgen.demo import cfg
from atomgen.demo.report import COLUMNS, aggregate
from atomgen.demo.run import METHODS, DemoConfig, _batch_sizes, run_demo
from atomgen.train.config import ConfigError

# A tiny UNet, two training steps, twelve samples (six per class in the CFG section): seconds, and every
# code path of the real demo.
TINY_SETS = ["model.block_out_channels=[8,16]", "model.norm_num_groups=4", "train.batch_size=16"]
TINY = {
    "steps": 2,
    "num_samples": 12,
    "num_inference_steps": 2,
    "sample_batch_size": 6,
    "overrides": tuple(TINY_SETS),
    "cfg_steps": 2,
    "cfg_samples_per_class": 6,
    "cfg_inference_steps": 2,
}
TINY_ARGS = ["--steps", "2", "--num-samples", "12", "--num-inference-steps", "2"]
TINY_ARGS += ["--cfg-steps", "2", "--cfg-samples-per-class", "6", "--cfg-inference-steps", "2"]
for item in TINY_SETS:
    TINY_ARGS += ["--set", item]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run through the command line: two seeds, the repulsive mode, the digit classifier's features."""
    out = tmp_path_factory.mktemp("demo") / "run"
    argv = ["demo", "--out", str(out), "--no-progress", "--seeds", "2", "--mode", "repulsive", *TINY_ARGS]
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_digits_loader():
    data = load_digits_images()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    assert data.images.min() == -1 and data.images.max() == 1
    assert data.labels.shape == (1797,) and set(data.labels.tolist()) == set(range(10))
    subset = load_digits_images(classes=[0, 1])
    assert set(subset.labels.tolist()) == {0, 1} and len(subset) < len(data)
    with pytest.raises(ValueError, match="subset of the digits"):
        load_digits_images(classes=[10])


@pytest.mark.slow
def test_report_json_has_every_method_and_metric(demo_run):
    out, report = demo_run
    assert report["seeds"] == [0, 1]
    assert [m["key"] for m in report["methods"]] == [m.key for m in METHODS]
    assert {c["key"] for c in report["columns"]} == {c.key for c in COLUMNS}
    assert all(c["better"] in ("lower", "higher") and c["meaning"] for c in report["columns"])
    for method in METHODS:
        entry = report["table"][method.key]
        for column in COLUMNS:
            stats = entry[column.key]
            assert _finite(stats["mean"]) and _finite(stats["std"]), (method.key, column.key, stats)
            assert len(stats["values"]) == 2
        assert _finite(entry["sample_seconds"]["mean"])
        if method.kind == "training":
            assert _finite(entry["train_seconds"]["mean"])
    for key in ("vendi", "lpips_diversity", "modes_covered", "kl"):
        assert _finite(report["reference"][key])
    for model in ("baseline", "atom", "dispersive"):
        assert _finite(report["training"][model]["final_task_loss"]["mean"])
    assert _finite(report["training"]["atom"]["final_separation_loss"]["mean"])
    for key in ("auc_importance", "auc_random", "gain", "mean_abs_charge"):
        assert _finite(report["attribution"][key]["mean"])
    settings = report["settings"]
    assert settings["atom_mode"] == "repulsive" and settings["atom_mode_source"] == "--mode"
    assert settings["demo"]["steps"] == 2 and settings["model"]["block_out_channels"] == [8, 16]
    assert report["scoring"]["features"]["extractor"].startswith("digit-classifier-digits")
    assert report["machine"]["cpu"] and report["machine"]["torch_threads"] >= 1
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    assert _finite(report["wall_seconds"])
    assert len(report["runs"]) == 2 * len(METHODS)
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporaries behind


@pytest.mark.slow
def test_report_md_and_pictures(demo_run):
    out, report = demo_run
    text = (out / "report.md").read_text()
    for method in METHODS:
        assert method.label in text
    assert "mode = repulsive" in text and report["scoring"]["features"]["extractor"] in text
    assert "± is the sample standard deviation" in text and "real data (reference)" in text
    files = report["figures"]
    pictures = [
        *files["samples"].values(),
        files["attribution"],
        files["deletion"],
        files["diversity_fidelity"],
    ]
    assert len(pictures) == len(METHODS) + 3
    for name in pictures:
        assert f"({name})" in text
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 16
    # 12 samples of 8×8, enlarged ×5 to 40 px, 8 per row with 2 px gaps: 2 rows
    with Image.open(out / files["samples"]["atom"]) as grid:
        assert grid.size == (8 * 42 + 2, 2 * 42 + 2)


@pytest.mark.slow
def test_training_runs_and_samples_are_reusable(demo_run):
    """The runs are stock ``atomgen train`` directories, and ``atomgen eval`` reproduces the table."""
    from atomgen.eval import run_eval

    out, report = demo_run
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["atom"]["separation"]["options"] == {"mode": "repulsive"}
    assert config["training"]["dispersive"]["separation"]["method"] == "dispersive"
    for seed in (0, 1):
        for model in ("baseline", "atom", "dispersive"):
            assert (out / f"seed-{seed}" / model / "pipeline" / "model_index.json").is_file()
    assert (out / "seed-0" / "atom" / "pipeline" / "separation" / "config.json").is_file()
    samples = out / "seed-1" / "samples" / "particle-guidance.npz"
    with np.load(samples) as archive:
        assert archive["images"].shape == (12, 1, 8, 8) and archive["images"].dtype == np.uint8
    again = run_eval("digits", samples, ["fid"], "digits", progress=False)
    recorded = report["table"]["particle-guidance"]["fid"]["values"][1]
    assert again["metrics"]["fid"] == pytest.approx(recorded, rel=1e-6)


@pytest.mark.slow
def test_report_states_the_settings_the_runs_used(demo_run):
    """λ, τ and γ in the report are what the trainings and the sampling used (atom 0.3 ≠ dispersive 0.03)."""
    out, report = demo_run
    text = (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    methods = report["settings"]["methods"]
    assert config["methods"] == methods
    for model, label in (("atom", "atom separation"), ("dispersive", "Dispersive Loss")):
        used = yaml.safe_load((out / "seed-0" / model / "config.yaml").read_text())["separation"]
        assert used["weight"] == config["training"][model]["separation"]["weight"]
        assert methods[model]["weight"] == used["weight"]
        stated = re.search(rf"^- {label}: at `[^`]+`, weight λ = ([0-9.e+-]+)", text, re.MULTILINE)
        assert stated and float(stated.group(1)) == pytest.approx(used["weight"]), (model, stated)
    assert methods["atom"]["weight"] != methods["dispersive"]["weight"]  # the defaults differ: a real check
    tau = DispersiveLoss().tau
    assert methods["dispersive"]["options"]["tau"] == tau and f"τ = {tau:g}" in text
    demo = report["settings"]["demo"]
    for key, field in (("atom-guidance", "atom_guidance"), ("particle-guidance", "particle_guidance")):
        assert methods[key]["strength"] == demo[field]
        row = next(m for m in report["methods"] if m["key"] == key)
        assert row["strength"] == demo[field] and f"{row['label']}, γ = {demo[field]:g}" in text


@pytest.mark.slow
def test_cfg_section(demo_run):
    """One class-conditional run (first seed), every setting scored, the table and the front in the report."""
    out, report = demo_run
    section = report["cfg"]
    assert [row["setting"] for row in section["rows"]] == [s.key for s in cfg.SETTINGS]
    for row in section["rows"]:
        for key in ("w", "precision", "recall", "coverage", "accuracy", "sample_seconds"):
            assert _finite(row[key]), (row["setting"], key)
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["precision"] <= 1
        assert (row["strength"] is None) == (row["method"] == "cfg")
    assert [row["w"] for row in section["rows"] if row["method"] == "cfg"] == list(cfg.SCALES)
    assert {row["w"] for row in section["rows"] if row["method"] != "cfg"} == {cfg.GUIDED_SCALE}
    assert section["samples_per_class"] == 6 and section["num_inference_steps"] == 2
    assert section["scoring"]["classifier"] == "digits"

    trained = json.loads((out / "config.json").read_text())["training"]["cfg"]
    assert trained["model"]["num_classes"] == 10 and trained["model"]["objective"] == "v_prediction"
    assert trained["train"]["label_dropout"] == 0.1 and trained["separation"]["method"] == "none"
    assert trained["train"]["steps"] == 2 and trained["model"]["block_out_channels"] == [8, 16]
    assert (out / "seed-0" / "cfg" / "pipeline" / "model_index.json").is_file()
    assert not (out / "seed-1" / "cfg").exists()  # one seed only

    text = (out / "report.md").read_text()
    assert "## Classifier-free guidance" in text and "bench/cfg.py" in text
    assert "not statistically meaningful" in text
    for setting in cfg.SETTINGS:
        assert f"| {setting.label} | {setting.scale:g} |" in text
    assert report["figures"]["cfg_front"] == "cfg-front.png" and "(cfg-front.png)" in text
    with Image.open(out / "cfg-front.png") as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 16


@pytest.mark.slow
def test_weight_zero_replays_the_baseline(tmp_path):
    """With λ = 0 the atom run is an exact replay of the baseline: same weights, batches, noise, samples.

    The CFG section is off (``cfg=False``): no class-conditional run, no section, no front.
    """
    overrides = (*TINY["overrides"], "separation.weight=0")
    report = run_demo(tmp_path, progress=False, **{**TINY, "overrides": overrides, "cfg": False})
    for column in COLUMNS:
        assert report["table"]["atom"][column.key] == report["table"]["baseline"][column.key]
    with (
        np.load(tmp_path / "seed-0/samples/atom.npz") as a,
        np.load(tmp_path / "seed-0/samples/baseline.npz") as b,
    ):
        assert np.array_equal(a["images"], b["images"])
    assert report["settings"]["atom_mode_source"] == "library default"
    assert "cfg" not in report and "cfg_front" not in report["figures"]
    assert not (tmp_path / "cfg-front.png").exists() and not (tmp_path / "seed-0" / "cfg").exists()
    assert "Classifier-free guidance" not in (tmp_path / "report.md").read_text()
    assert "cfg" not in json.loads((tmp_path / "config.json").read_text())["training"]


def test_aggregate_and_batches():
    two = aggregate([1.0, 3.0])
    assert two["mean"] == 2.0 and two["std"] == pytest.approx(math.sqrt(2.0)) and two["values"] == [1.0, 3.0]
    assert aggregate([5.0])["std"] is None
    assert aggregate([None])["mean"] is None
    assert _batch_sizes(129, 128) == [65, 64] and _batch_sizes(12, 128) == [12]
    assert all(min(_batch_sizes(n, 4)) >= 2 for n in range(2, 50))


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="num_samples must be an integer of at least 8"):
        DemoConfig(num_samples=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        DemoConfig(mode="attractive")
    with pytest.raises(ValueError, match="atom_guidance must be a finite number"):
        DemoConfig(atom_guidance=float("nan"))
    with pytest.raises(ValueError, match="cfg_steps must be a positive integer"):
        DemoConfig(cfg_steps=0)
    with pytest.raises(ValueError, match="cfg_samples_per_class must be an integer of at least 6"):
        DemoConfig(cfg_samples_per_class=5)
    with pytest.raises(ValueError, match="cfg must be True or False"):
        DemoConfig(cfg="no")
    with pytest.raises(TypeError, match="unknown settings"):
        run_demo(tmp_path, stpes=3)
    with pytest.raises(ConfigError, match="bogus"):  # refused before any work: nothing is written
        run_demo(tmp_path / "new", overrides=("train.bogus=1",))
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="packaged configs"):
        run_demo(tmp_path / "new", config=DemoConfig(config=str(tmp_path / "missing.yaml")))


def test_cli_help_defaults_and_user_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert f"(default: {DemoConfig().steps})" in help_text and "--inception" in help_text
    quick = build_parser(quick=True).parse_args(["demo", "--quick"])
    assert (quick.steps, quick.num_samples) == (DemoConfig.quick().steps, DemoConfig.quick().num_samples)
    assert build_parser(quick=True).parse_args(["demo", "--quick", "--steps", "7"]).steps == 7
    assert quick.cfg_steps == DemoConfig.quick().cfg_steps < DemoConfig().cfg_steps
    assert build_parser().parse_args(["demo", "--no-cfg"]).cfg is False
    assert not hasattr(build_parser().parse_args(["demo"]), "cfg") and DemoConfig().cfg  # the default: on

    bad = (
        ["demo", "--bogus"],
        ["demo", "--steps", "0"],
        ["demo", "--seeds", "0"],
        ["demo", "--atom-guidance", "abc"],
        ["demo", "--cfg-samples-per-class", "3"],
        ["demo", "--mode", "x"],
        ["demo", "--out", str(tmp_path / "a"), "--set", "train.bogus=1"],
        [],
    )
    for argv in bad:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert not (tmp_path / "a").exists()

    (tmp_path / "taken.txt").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "not an empty directory" in capsys.readouterr().err
