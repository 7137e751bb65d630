"""Training on tiny sizes: outputs diffusers loads, exact resume, non-finite handling, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel

import atomgen.train.loop
from atomgen import AtomSeparation
from atomgen.train import TrainingDiverged, train
from atomgen.train.checkpoints import list_checkpoints
from atomgen.train.config import ConfigError, ExperimentConfig

ROOT = Path(__file__).parent.parent


def tiny(tmp_path: Path, *overrides: str, family: str = "ddpm") -> ExperimentConfig:
    values = {
        "data": {"name": "digits", "limit": 64},
        "model": {"family": family, "block_out_channels": [8, 16], "norm_num_groups": 4},
        "separation": {"method": "atom", "weight": 0.5},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "steps": 4,
            "batch_size": 16,
            "lr_warmup_steps": 1,
            "checkpoint_every": 2,
            "log_every": 1,
            "ema_decay": 0.9,
        },
    }
    from atomgen.train.config import apply_overrides

    return ExperimentConfig.from_dict(apply_overrides(values, list(overrides)))


def _state(directory: Path, cls) -> dict[str, torch.Tensor]:
    return cls.from_pretrained(directory).state_dict()


@pytest.mark.slow
def test_ddpm_run_writes_config_metrics_checkpoints_and_a_loadable_pipeline(tmp_path):
    config = tiny(tmp_path, "train.keep_checkpoints=1", "separation.site=down_blocks.1")
    run = train(config)
    assert ExperimentConfig.from_yaml(run / "config.yaml") == config
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for key in (
        "L_task",
        "L_atom",
        "L_sep",
        "C_p",
        "C_s",
        "atom_distance",
        "importance_entropy",
        "step_time",
    ):
        assert all(key in line for line in lines), key
    assert [step for step, _ in list_checkpoints(run)] == [4]  # keep_checkpoints=1
    assert not any(p.name.endswith(".tmp") for p in (run / "checkpoints").iterdir())
    # A fresh process loads the stock pipeline with the generic loader and samples from it.
    script = (
        "import sys, torch; from diffusers import DiffusionPipeline; from atomgen import AtomSeparation\n"
        "pipe = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "images = pipe(batch_size=2, num_inference_steps=3, output_type='np',"
        " generator=torch.Generator().manual_seed(0)).images\n"
        "assert type(pipe).__name__ == 'DDPMPipeline' and images.shape == (2, 8, 8, 1), images.shape\n"
        "AtomSeparation.from_pretrained(sys.argv[1] + '/separation')\n"
        "from atomgen.pipelines import AtomDDIMPipeline\n"
        "atom = AtomDDIMPipeline.from_pretrained(sys.argv[1])\n"
        "assert atom.separation is not None and atom.config.separation_site == 'down_blocks.1', atom.config\n"
    )
    subprocess.run([sys.executable, "-c", script, str(run / "pipeline")], check=True, timeout=300)


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    straight = train(tiny(tmp_path / "a"))

    def crash(step: int, _metrics: dict) -> None:
        if step == 3:  # after the checkpoint at step 2, before the one at step 4
            raise KeyboardInterrupt

    interrupted = tiny(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, on_step_end=crash)
    assert [step for step, _ in list_checkpoints(Path(interrupted.train.output_dir))] == [2]
    resumed = train(interrupted, resume="latest")

    for name, cls in (("pipeline/unet", UNet2DModel), ("pipeline/separation", AtomSeparation)):
        a, b = _state(straight / name, cls), _state(resumed / name, cls)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the lines of the lost step 3 were dropped, then written again


def test_vae_run_saves_a_loadable_autoencoder(tmp_path):
    run = train(tiny(tmp_path, "train.steps=2", family="vae"))
    vae = AutoencoderKL.from_pretrained(run / "vae")
    assert vae(torch.zeros(2, 1, 8, 8)).sample.shape == (2, 1, 8, 8)
    assert AtomSeparation.from_pretrained(run / "vae" / "separation").config.dim == 2  # latent channels


def test_dispersive_and_no_separation_runs_with_gradient_accumulation(tmp_path):
    for method in ("dispersive", "none"):
        overrides = (f"separation.method={method}", "train.steps=2", "train.gradient_accumulation_steps=2")
        run = train(tiny(tmp_path / method, *overrides))
        line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert ("L_disp" in line) == (method == "dispersive") and "L_atom" not in line
        assert not (run / "pipeline" / "separation").exists()


def test_dry_run_writes_only_the_config(tmp_path):
    run = train(tiny(tmp_path), dry_run=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_non_finite_losses_skip_then_stop_with_the_checkpoint_intact(tmp_path, monkeypatch):
    forward = atomgen.train.loop._DenoiserObjective.forward

    def poisoned(self, draws):
        loss = forward(self, draws)
        return loss * float("nan") if poisoned.calls_after_checkpoint() else loss

    calls = {"n": 0}

    def after_checkpoint() -> bool:
        calls["n"] += 1
        return calls["n"] > 2  # steps 1–2 train (checkpoint at 2), then every loss is NaN

    poisoned.calls_after_checkpoint = after_checkpoint
    monkeypatch.setattr(atomgen.train.loop._DenoiserObjective, "forward", poisoned)
    config = tiny(tmp_path, "train.steps=10", "train.max_nonfinite=3")
    with pytest.raises(TrainingDiverged, match=r"3 non-finite losses in a row.*step-0000002"):
        train(config)
    run = Path(config.train.output_dir)
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert json.loads((run / "checkpoints" / "step-0000002" / "trainer_state.json").read_text()) == {
        "step": 2
    }


def test_resume_without_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train(tiny(tmp_path), resume="latest")


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """accelerate launch --num_processes 2 on the CPU (gloo): same global batch, same losses.

    Without GPUs, ``--multi_gpu`` starts the two processes (``--cpu`` starts one) and
    ``ACCELERATE_USE_CPU`` makes them one gloo group on the CPU; the test checks that two processes
    trained together."""
    common = ["train.steps=2", "train.ema_decay=null", "train.checkpoint_every=100"]
    single = train(tiny(tmp_path / "one", *common))
    config_path = tmp_path / "two.yaml"
    config_path.write_text(tiny(tmp_path / "two", *common).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "atomgen", "train", str(config_path),
    ]  # fmt: skip
    result = subprocess.run(
        command, check=True, timeout=600, env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert "2 process(es)" in result.stderr
    two = tmp_path / "two" / "run"

    def log(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(log(single), log(two), strict=True):
        for key in ("L_task", "L_atom", "L_sep", "C_s", "C_p"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Only the main process writes the outputs: one metrics line per step, one pipeline.
    assert len(log(two)) == 2
    assert (two / "pipeline" / "model_index.json").is_file()


def test_class_conditional_v_prediction_run_exports_a_cfg_pipeline(tmp_path):
    from atomgen.pipelines import AtomClassConditionalPipeline

    config = tiny(tmp_path, "model.num_classes=10", "model.objective=v_prediction", "train.label_dropout=0.5")
    run = train(config)
    pipe = AtomClassConditionalPipeline.from_pretrained(run / "pipeline")
    assert pipe.unet.config.num_class_embeds == 11  # ten digits and the null label
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert isinstance(pipe.separation, AtomSeparation)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1, 2], guidance_scale=2.0, num_inference_steps=2, output_type="pt").images
    assert images.shape == (3, 1, 8, 8)


def test_label_dropout_draws_the_null_label_and_unconditional_draws_are_unchanged(tmp_path):
    from accelerate import Accelerator

    from atomgen.train.loop import _Draws

    data = tiny(tmp_path).data.load()
    chunk = torch.arange(16)
    accelerator = Accelerator(cpu=True)
    plain = _Draws(chunk, data, 0, 3, 0, tiny(tmp_path), accelerator)
    conditional = _Draws(chunk, data, 0, 3, 0, tiny(tmp_path, "model.num_classes=10"), accelerator)
    dropped = _Draws(
        chunk, data, 0, 3, 0, tiny(tmp_path, "model.num_classes=10", "train.label_dropout=0.99"), accelerator
    )
    assert plain.labels is None and torch.equal(plain.noise, conditional.noise)
    assert torch.equal(
        conditional.labels[conditional.labels < 10], data.labels[chunk][conditional.labels < 10]
    )
    assert (dropped.labels == 10).float().mean() > 0.8


def test_within_class_separation_and_snapshots(tmp_path):
    """Pairs of one label only change the separation term; snapshots are loadable pipelines."""
    from atomgen.pipelines import AtomClassConditionalPipeline

    def first_separation(run: Path) -> float:
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["L_sep"]

    conditional = ("model.num_classes=10", "train.steps=2", "train.snapshot_steps=[1]")
    mixed = train(tiny(tmp_path / "mixed", *conditional))
    within = train(tiny(tmp_path / "within", *conditional, "separation.within_class=true"))
    assert first_separation(within) != pytest.approx(first_separation(mixed), rel=1e-3)
    pipe = AtomClassConditionalPipeline.from_pretrained(within / "snapshots" / "step-1" / "pipeline")
    assert pipe.unet.config.num_class_embeds == 11


def test_class_conditional_needs_matching_labels(tmp_path):
    with pytest.raises(ValueError, match=r"has 10 classes; set model\.num_classes: 10"):
        train(tiny(tmp_path, "model.num_classes=5"))
    with pytest.raises(ConfigError, match=r"model\.num_classes=10 does not apply to model\.family='vae'"):
        tiny(tmp_path, "model.num_classes=10", family="vae")
