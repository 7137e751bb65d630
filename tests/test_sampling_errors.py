"""``atomgen sample`` on bad input: each a clear error before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import DDIMPipeline, DDIMScheduler
from tiny import tiny_dit, tiny_unet

from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.sampling import SampleConfig, sample


@pytest.fixture(scope="module")
def ddim_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("ddim")
    DDIMPipeline(tiny_unet(), DDIMScheduler()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("dit")
    tiny_dit().save_pretrained(folder)
    return str(folder)


def refused(error: type[Exception], match: str, source: str, out: Path, **options) -> None:
    """``sample`` raises ``error`` matching ``match``, and ``out`` is not created."""
    with pytest.raises(error, match=match):
        sample(SampleConfig(source, out, progress=False, device="cpu", steps=2, **options))
    assert not out.exists()


def test_a_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("no model_index.json here")
    refused(FileNotFoundError, "holds no model_index.json, so it is no saved pipeline", str(tmp_path / "weights"),
            tmp_path / "out", num_samples=2)  # fmt: skip


def test_an_unfinished_training_run_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: {}\n")
    refused(
        FileNotFoundError, "training has not finished", str(tmp_path / "run"), tmp_path / "out", num_samples=2
    )


def test_prompts_for_a_class_conditional_model(tmp_path, dit_folder):
    refused(ValueError, "DiTPipeline takes no prompts", dit_folder, tmp_path / "out", num_samples=2,
            prompts=("a cat",))  # fmt: skip


def test_class_labels_out_of_range(tmp_path):
    folder = tmp_path / "cfg"
    AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), DDIMScheduler()).save_pretrained(folder)
    refused(ValueError, r"class labels \[3, 7\] are out of range: .* has 3 classes, 0…2", str(folder),
            tmp_path / "out", num_samples=4, class_labels=(0, 3, 7))  # fmt: skip


def test_class_labels_for_an_unconditional_model(tmp_path, ddim_folder):
    refused(ValueError, "DDIMPipeline is not class-conditional", ddim_folder, tmp_path / "out", num_samples=2,
            class_labels=(1,))  # fmt: skip


def test_options_the_pipeline_does_not_take(tmp_path, ddim_folder):
    refused(ValueError, "DDIMPipeline takes no guidance_scale: leave out --guidance-scale", ddim_folder,
            tmp_path / "out", num_samples=2, guidance_scale=3.0)  # fmt: skip
    refused(ValueError, "--scheduler 'KarrasVeScheduler' is not one .* compatible: .*DDPMScheduler", ddim_folder,
            tmp_path / "out", num_samples=2, scheduler="KarrasVeScheduler")  # fmt: skip


def test_a_method_the_pipeline_cannot_take(tmp_path, ddim_folder):
    # the guidance interval edits the two halves of classifier-free guidance; DDIMPipeline has none
    refused(ValueError, "interval", ddim_folder, tmp_path / "out", num_samples=2, methods=("interval:0.2",))


def test_zero_samples(tmp_path, ddim_folder, capsys):
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        SampleConfig(ddim_folder, tmp_path / "out", num_samples=0)
    from atomgen.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["sample", ddim_folder, "--out", str(tmp_path / "out"), "--num-samples", "0"])
    assert exit.value.code == 2 and "num_samples must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_holds_another_run(tmp_path, ddim_folder):
    out = tmp_path / "out"
    sample(SampleConfig(ddim_folder, out, num_samples=2, steps=2, progress=False, device="cpu"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        ValueError, match=r"holds a different run \(manifest.json differs in settings.seed: 0 → 1\)"
    ):
        sample(SampleConfig(ddim_folder, out, num_samples=2, steps=2, seed=1, progress=False, device="cpu"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_output_folder_of_other_files(tmp_path, ddim_folder):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds files but no manifest\.json"):
        sample(SampleConfig(ddim_folder, tmp_path / "out", num_samples=2, steps=2, progress=False))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo.png"]


def test_a_class_that_is_not_installed_needs_trust_remote_code(tmp_path, ddim_folder):
    folder = tmp_path / "community"
    DDIMPipeline.from_pretrained(ddim_folder).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "MyCommunityPipeline"}))
    refused(ValueError, r"names MyCommunityPipeline.*trust_remote_code=True", str(folder), tmp_path / "out",
            num_samples=2)  # fmt: skip
    # a component from a module that came with the model, too
    index["unet"] = ["my_unet", "MyUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    refused(
        ValueError,
        r"my_unet.MyUNet \(unet\).*trust_remote_code=True",
        str(folder),
        tmp_path / "out",
        num_samples=2,
    )


def test_pickled_weights_need_allow_pickle(tmp_path):
    folder = tmp_path / "pickled"
    DDIMPipeline(tiny_unet(), DDIMScheduler()).save_pretrained(folder, safe_serialization=False)
    refused(ValueError, r"the weights of unet are pickles only.*allow_pickle=True", str(folder),
            tmp_path / "out", num_samples=2)  # fmt: skip
    manifest = sample(SampleConfig(str(folder), tmp_path / "out", num_samples=2, steps=2, allow_pickle=True,
                                   progress=False, device="cpu"))  # fmt: skip
    assert manifest["complete"]


def test_a_hub_id_offline_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    refused(FileNotFoundError, "is no folder here, and the hub repository of that name could not be read.*offline",
            "atomgen-tests/no-such-pipeline", tmp_path / "out", num_samples=2)  # fmt: skip
