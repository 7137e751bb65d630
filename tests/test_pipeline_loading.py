"""``load_pipeline``: diffusers' and atomgen's saved pipelines by the class their ``model_index.json``
names, with no remote code and no pickles unless asked; tiny pipelines saved in the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline
from tiny import quiet, tiny_dit, tiny_unet, tiny_vae

from atomgen import AtomSeparation
from atomgen.pipelines import AtomClassConditionalPipeline, AtomDDPMPipeline, AtomVAEPipeline
from atomgen.pipelines.loading import load_pipeline


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def class_conditional(folder):
    pipe = quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=11), DDIMScheduler()))
    pipe.save_pretrained(folder)
    return pipe


def test_each_folder_loads_as_the_class_it_names(tmp_path):
    saved = class_conditional(tmp_path / "cfg")
    pipe = quiet(load_pipeline(tmp_path / "cfg"))
    assert type(pipe) is AtomClassConditionalPipeline
    options = dict(class_labels=[1, 2], num_inference_steps=2, output_type="pt")
    assert torch.equal(pipe(generator=seed(), **options).images, saved(generator=seed(), **options).images)

    tiny_dit().save_pretrained(tmp_path / "dit")
    assert (
        type(load_pipeline(str(tmp_path / "dit"))) is DiTPipeline
    )  # a diffusers class, as diffusers loads it

    DDPMPipeline(tiny_unet(), DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    assert type(load_pipeline(tmp_path / "ddpm")) is DDPMPipeline
    AtomSeparation(dim=16).save_pretrained(tmp_path / "ddpm" / "separation")  # the layout of `atomgen train`
    trained = load_pipeline(tmp_path / "ddpm")
    assert type(trained) is AtomDDPMPipeline and isinstance(trained.separation, AtomSeparation)

    tiny_vae().save_pretrained(tmp_path / "vae")  # a VAE run's vae/: a bare AutoencoderKL
    assert type(load_pipeline(tmp_path / "vae")) is AtomVAEPipeline

    half = load_pipeline(tmp_path / "cfg", torch_dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16


def test_classes_from_elsewhere_need_trust_remote_code(tmp_path):
    class_conditional(tmp_path / "cfg")
    index_file = tmp_path / "cfg" / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps(index | {"_class_name": "MysteryPipeline"}))
    with pytest.raises(ValueError, match=r"names MysteryPipeline, outside diffusers.*trust_remote_code=True"):
        load_pipeline(tmp_path / "cfg")
    index_file.write_text(json.dumps(index | {"unet": ["my_models", "FastUNet"]}))
    with pytest.raises(ValueError, match=r"my_models\.FastUNet \(unet\)"):
        load_pipeline(tmp_path / "cfg")
    index_file.write_text(json.dumps(index | {"_class_name": ["pipeline", "MyPipeline"]}))
    with pytest.raises(ValueError, match=r"pipeline\.MyPipeline"):
        load_pipeline(tmp_path / "cfg")


def test_pickled_weights_need_allow_pickle(tmp_path):
    pipe = quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=11), DDIMScheduler()))
    pipe.save_pretrained(tmp_path / "cfg", safe_serialization=False)
    assert (tmp_path / "cfg" / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match=r"weights of unet are pickles only.*allow_pickle=True"):
        load_pipeline(tmp_path / "cfg")
    assert type(load_pipeline(tmp_path / "cfg", allow_pickle=True)) is AtomClassConditionalPipeline


def test_what_is_no_pipeline_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline folder at"):
        load_pipeline(tmp_path / "missing")
    class_conditional(tmp_path / "run" / "pipeline")
    with pytest.raises(
        FileNotFoundError, match=r"no model_index\.json.*keeps its pipeline in .*run/pipeline"
    ):
        load_pipeline(tmp_path / "run")


CHILD = textwrap.dedent(
    """
    import sys
    from diffusers import DiffusionPipeline
    from atomgen.pipelines import AtomClassConditionalPipeline
    from atomgen.pipelines.loading import load_pipeline

    assert type(load_pipeline(sys.argv[1])) is AtomClassConditionalPipeline
    try:
        load_pipeline("nobody/no-such-pipeline")
    except FileNotFoundError as error:
        assert "no folder here" in str(error) and "cached" in str(error), error
    print("loaded")
    """
)


@pytest.mark.slow
def test_the_exported_pipeline_loads_offline_in_a_fresh_process(tmp_path):
    class_conditional(tmp_path / "cfg")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "cfg")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().endswith("loaded")
