"""``atomgen demo`` end to end at tiny sizes, its report, and the command line."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from atomgen import DispersiveLoss
from atomgen.cli import build_parser, main
from atomgen.data import load_digits_images
from atomgen.demo import cfg, vae
from atomgen.demo.attribution import ATTRIBUTIONS
from atomgen.demo.config import METHODS, DemoConfig, batch_sizes
from atomgen.demo.run import run_demo
from atomgen.demo.scoring import COLUMNS, aggregate
from atomgen.seeding import generator
from atomgen.train.config import ConfigError

# A tiny UNet, two training steps, twelve samples (six per class in the CFG section; twelve prior samples
# of each two-step VAE): seconds, and every code path of the real demo.
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
    "vae_steps": 2,
    "vae_samples": 12,
}
TINY_ARGS = ["--steps", "2", "--num-samples", "12", "--num-inference-steps", "2"]
TINY_ARGS += ["--cfg-steps", "2", "--cfg-samples-per-class", "6", "--cfg-inference-steps", "2"]
TINY_ARGS += ["--vae-steps", "2", "--vae-samples", "12"]
for item in TINY_SETS:
    TINY_ARGS += ["--set", item]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run through the command line: two seeds, the repulsive mode, the digit classifier's features."""
    out = tmp_path_factory.mktemp("demo") / "run"
    argv = ["demo", "--out", str(out), "--no-progress", "--seeds", "2", "--mode", "repulsive", *TINY_ARGS]
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _assert_png(path) -> None:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 16, path


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
    attribution = report["attribution"]
    assert attribution["methods"] == list(ATTRIBUTIONS) and attribution["reference"] == "mean particle"
    for method in ATTRIBUTIONS:
        for key in ("deletion_auc", "deletion_gain", "insertion_auc", "insertion_gain"):
            assert _finite(attribution["table"][method][key]["mean"]), (method, key)
    gains = attribution["table"]["importance"]
    assert gains["deletion_gain"]["mean"] == pytest.approx(
        gains["deletion_auc"]["mean"] - attribution["random"]["deletion_auc"]["mean"]
    )
    assert attribution["best_baseline"] in ATTRIBUTIONS[1:]
    for curve in ("deletion", "insertion"):  # the best method of a curve has the largest mean gain
        best = attribution["best"][curve]
        top = max([0.0, *(attribution["table"][m][f"{curve}_gain"]["mean"] for m in ATTRIBUTIONS)])
        assert (0.0 if best == "random" else attribution["table"][best][f"{curve}_gain"]["mean"]) == top
    for key in ("mean_abs_charge", "mean_importance"):
        assert _finite(attribution[key]["mean"])
    assert set(report["timings"]) == {"setup", "ddpm", "attribution", "cfg", "vae", "report"}
    assert all(_finite(spent["wall"]) and _finite(spent["cpu"]) for spent in report["timings"].values())
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
        files["attribution_curves"],
        files["diversity_fidelity"],
    ]
    assert len(pictures) == len(METHODS) + 3
    for name in pictures:
        assert f"({name})" in text
        _assert_png(out / name)
    # 12 samples of 8×8, enlarged ×5 to 40 px, 8 per row with 2 px gaps: 2 rows
    with Image.open(out / files["samples"]["atom"]) as grid:
        assert grid.size == (8 * 42 + 2, 2 * 42 + 2)
    assert "wall time by section: setup" in text and "load average (1 min) at the start" in text


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
    assert section["batches"] == [6] * 10  # one batch per class at these sizes
    assert section["scoring"]["classifier"] == "digits"

    trained = json.loads((out / "config.json").read_text())["training"]["cfg"]
    assert trained["model"]["num_classes"] == 10 and trained["model"]["objective"] == "v_prediction"
    assert trained["train"]["label_dropout"] == 0.1 and trained["separation"]["method"] == "none"
    assert trained["train"]["steps"] == 2 and trained["model"]["block_out_channels"] == [8, 16]
    assert (out / "seed-0" / "cfg" / "pipeline" / "model_index.json").is_file()
    assert not (out / "seed-1" / "cfg").exists()  # one seed only

    text = (out / "report.md").read_text()
    assert "## Classifier-free guidance" in text and "bench/cfg.py" in text
    assert "in batches of one class each" in text
    assert "not statistically meaningful" in text
    for setting in cfg.SETTINGS:
        assert f"| {setting.label} | {setting.scale:g} |" in text
    assert report["figures"]["cfg_front"] == "cfg-front.png" and "(cfg-front.png)" in text
    _assert_png(out / "cfg-front.png")


@pytest.mark.slow
def test_attribution_section(demo_run):
    """The learned maps beside the best baseline's, both curves, and a table of both areas per method."""
    out, report = demo_run
    text = (out / "report.md").read_text()
    attribution = report["attribution"]
    labels = attribution["labels"]
    section = text.split("## Attribution", 1)[1].split("\n## ", 1)[0]
    assert (
        "mean particle" in section
        and "Best on deletion: **" in section
        and "best on insertion: **" in section
    )
    assert "| method | deletion AUC ↑ | deletion gain ↑ | insertion AUC ↑ | insertion gain ↑ |" in section
    for method in ATTRIBUTIONS:
        assert f"| {labels[method]}" in section
    assert f"| {labels[attribution['best_baseline']]} (best baseline) |" in section
    assert "| random order (reference) |" in section
    importance = attribution["table"]["importance"]
    for curve in ("deletion", "insertion"):  # a baseline that beats the learned importances is named
        beaten = [
            m
            for m in ATTRIBUTIONS[1:]
            if attribution["table"][m][f"{curve}_gain"]["mean"] > importance[f"{curve}_gain"]["mean"]
        ]
        if beaten:
            assert f"the learned importances ({importance[f'{curve}_gain']['mean']:+.4f})" in section
    assert report["figures"]["attribution_curves"] == "attribution-curves.png"
    _assert_png(out / "attribution.png")  # three rows: samples, learned maps, best baseline's maps


@pytest.mark.slow
def test_vae_section(demo_run):
    """Two VAEs (first seed), measured on held-out images, prior samples scored, a table and a figure."""
    out, report = demo_run
    section = report["vae"]
    assert [row["model"] for row in section["rows"]] == list(vae.MODELS)
    assert [row["separation"] for row in section["rows"]] == ["none", "atom"]
    assert section["held_out_images"] == DemoConfig().vae_held_out
    assert section["training_images"] == 1797 - DemoConfig().vae_held_out
    assert section["prior_samples"] == 12 and section["model"]["steps"] == 2
    for row in section["rows"]:
        scores = row["vae"]
        assert scores["images"] == section["held_out_images"] and 0 <= scores["active_units"] <= 32
        assert _finite(scores["reconstruction_mse"]) and _finite(scores["kl"])
        for key in ("precision", "recall", "coverage", "vendi", "fid"):
            assert _finite(row["metrics"][key]), (row["model"], key)
    trained = json.loads((out / "config.json").read_text())["training"]
    assert trained["vae-atom"]["separation"]["method"] == "atom"
    assert trained["vae-atom"]["separation"]["options"] == {"mode": "repulsive"}  # --mode reaches it
    assert trained["vae-baseline"]["model"]["family"] == "vae"
    assert trained["vae-baseline"]["data"]["limit"] == section["training_images"]
    assert trained["vae-baseline"]["model"]["block_out_channels"] == [16, 32]  # its own config, not --set
    for model in vae.MODELS:
        assert (out / "seed-0" / model / "vae" / "config.json").is_file()
        assert not (out / "seed-1" / model).exists()  # one seed only
    text = (out / "report.md").read_text()
    assert "## VAE: atom separation at the encoder" in text
    assert f"**{section['held_out_images']} images are held out**" in text
    for model in vae.MODELS:
        assert f"| {model} |" in text
    assert report["figures"]["vae"] == "vae.png" and "(vae.png)" in text
    _assert_png(out / "vae.png")


def test_held_out_images_are_unseen():
    """The VAE section measures on images whose pixels match no training image, in a fixed order."""
    from atomgen.train.config import DataConfig

    data = DataConfig(name="digits", limit=1700)
    held = data.held_out()
    training = {image.numpy().tobytes() for image in data.load().images}
    assert len(held) == 97 and held.labels.shape == (97,) and held.images.min() >= -1
    assert not any(image.numpy().tobytes() in training for image in held.images)
    assert torch.equal(data.held_out(10).images, held.images[:10])
    with pytest.raises(ValueError, match="fewer than the 98"):
        data.held_out(98)
    with pytest.raises(ValueError, match="no image is held out"):
        DataConfig(name="digits").held_out()


@pytest.mark.slow
def test_weight_zero_replays_the_baseline(tmp_path, capfd):
    """With λ = 0 the atom run is an exact replay of the baseline: same weights, batches, noise, samples.

    The CFG and VAE sections are off (``cfg=False``, ``vae=False``): no runs, no sections, no figures.
    ``progress=False`` (``--no-progress``) reaches training, sampling, scoring and pipeline loading: no
    bar is drawn.
    """
    overrides = (*TINY["overrides"], "separation.weight=0")
    capfd.readouterr()
    report = run_demo(
        tmp_path, progress=False, **{**TINY, "overrides": overrides, "cfg": False, "vae": False}
    )
    drawn = capfd.readouterr().err
    for mark in ("it/s]", "s/it]", "%|", "Loading pipeline components"):  # what a tqdm bar prints
        assert mark not in drawn, drawn[-2000:]
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
    assert "vae" not in report and "vae" not in report["figures"] and not (tmp_path / "vae.png").exists()
    assert (
        not (tmp_path / "seed-0" / "vae-atom").exists()
        and "## VAE" not in (tmp_path / "report.md").read_text()
    )
    assert set(report["timings"]) == {"setup", "ddpm", "attribution", "report"}


def test_aggregate_and_batches():
    two = aggregate([1.0, 3.0])
    assert two["mean"] == 2.0 and two["std"] == pytest.approx(math.sqrt(2.0)) and two["values"] == [1.0, 3.0]
    assert aggregate([5.0])["std"] is None
    assert aggregate([None])["mean"] is None
    assert batch_sizes(129, 128) == [65, 64] and batch_sizes(12, 128) == [12]
    assert all(min(batch_sizes(n, 4)) >= 2 for n in range(2, 50))


def test_cfg_batches_hold_one_class():
    """The CFG section's batch methods couple only images of one label: every batch holds one class."""
    batches = cfg.class_batches(7, 4)
    assert len(batches) == 2 * cfg.NUM_CLASSES
    assert all(len(set(batch.tolist())) == 1 and len(batch) >= 2 for batch in batches)
    labels = np.concatenate(batches)
    assert np.array_equal(np.bincount(labels), [7] * cfg.NUM_CLASSES)
    assert [len(b) for b in cfg.class_batches(6, 128)] == [6] * cfg.NUM_CLASSES


def test_demo_streams_come_from_atomgen_seeding():
    """No generator in the demo is seeded by hand (``seed * K + offset`` collides at seed 0); every stream
    is ``atomgen.seeding.generator(seed, purpose, *indices)``, and the CFG section's initial and step
    noise of one batch differ at seed 0."""
    folder = Path(cfg.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "manual_seed(" not in text and "Generator(" not in text, path.name
    for index in range(3):
        initial = torch.randn(16, generator=generator(0, cfg.INITIAL_NOISE, index))
        step = torch.randn(16, generator=generator(0, cfg.STEP_NOISE, index))
        assert not torch.equal(initial, step)


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
    with pytest.raises(ValueError, match="vae must be True or False"):
        DemoConfig(vae=1)
    with pytest.raises(ValueError, match="vae_steps must be a positive integer"):
        DemoConfig(vae_steps=0)
    with pytest.raises(ValueError, match="vae_samples must be an integer of at least 8"):
        DemoConfig(vae_samples=7)
    with pytest.raises(ValueError, match="vae_held_out must be an integer of at least 2"):
        DemoConfig(vae_held_out=1)
    with pytest.raises(ValueError, match="inception must be True or False"):
        DemoConfig(inception="yes")
    with pytest.raises(ValueError, match="overrides must be a sequence of 'key=value' strings"):
        DemoConfig(overrides="train.steps=3")
    with pytest.raises(ValueError, match="config must be the path of a YAML file"):
        DemoConfig(config=None)
    assert DemoConfig(config=Path("x.yaml"), overrides=["a=1"]) == DemoConfig(
        config="x.yaml", overrides=("a=1",)
    )
    with pytest.raises(ConfigError, match="hold out fewer"):  # refused before any work
        run_demo(tmp_path / "new", vae_held_out=1796)
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
    assert build_parser().parse_args(["demo", "--no-vae"]).vae is False and DemoConfig().vae
    assert quick.vae_steps == DemoConfig.quick().vae_steps < DemoConfig().vae_steps

    bad = (
        ["demo", "--bogus"],
        ["demo", "--steps", "0"],
        ["demo", "--seeds", "0"],
        ["demo", "--atom-guidance", "abc"],
        ["demo", "--cfg-samples-per-class", "3"],
        ["demo", "--vae-held-out", "1"],
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
