"""atomgen.sampling (``atomgen sample``): the batch layout, and real diffusers pipelines saved to a folder
and loaded by path — each run's images equal the stock pipeline called with the documented noise.

The SIGKILL and ``accelerate launch`` runs are in test_sampling_processes.py; bad input in
test_sampling_errors.py.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from tiny import quiet, tiny_dit, tiny_unet
from tiny_sd import sd_pipe  # noqa: F401 (a fixture: the tiny Stable Diffusion, nothing downloaded)

import atomgen.sampling
import atomgen.sampling.plan
from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.sampling import FORMAT, NPZ, SampleConfig, plan_batches, sample, shard
from atomgen.sampling.plan import balanced_counts
from atomgen.seeding import generator


def read_images(out: Path) -> np.ndarray:
    """The PNG files of a run, in the manifest's order, as uint8 ``(N, H, W, C)``."""
    manifest = json.loads((out / "manifest.json").read_text())
    arrays = [np.asarray(PIL.Image.open(out / entry["file"])) for entry in manifest["images"]]
    return np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])


def as_png(images) -> np.ndarray:
    """What a PNG file holds of a stock pipeline's ``output_type="np"`` images."""
    arrays = [np.asarray(image) for image in DiffusionPipeline.numpy_to_pil(np.asarray(images))]
    return np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])


def saved(pipe, folder: Path) -> str:
    pipe.save_pretrained(folder)
    return str(folder)


def run(source: str, out: Path, **options) -> dict:
    return sample(SampleConfig(source, out, progress=False, device="cpu", **options))


# --- the layout --------------------------------------------------------------------------------------


def test_batches_split_each_conditioning_evenly_and_pack_small_ones():
    sizes = lambda batches: [[count for _, count in batch.runs] for batch in batches]  # noqa: E731
    assert sizes(plan_batches([(None, 10)], 4)) == [[4], [3], [3]]  # never a lone last image
    assert [b.start for b in plan_batches([(None, 10)], 4)] == [0, 4, 7]
    # three classes of two: two whole classes to a batch of four, in order
    assert [b.runs for b in plan_batches([(0, 2), (1, 2), (2, 2)], 4)] == [((0, 2), (1, 2)), ((2, 2),)]
    # a class of 5 in batches of 4 is 3 + 2; unequal runs are not packed (prompts batch by equal counts)
    assert sizes(plan_batches([(0, 5), (1, 1), (2, 1)], 4)) == [[3], [2], [1, 1]]
    assert plan_batches([(0, 0), (1, 3)], 4)[0].per_image == [1, 1, 1]
    assert balanced_counts(10, 4) == [3, 3, 2, 2]


@pytest.mark.parametrize("processes", [1, 2, 3, 5])
def test_shards_are_disjoint_and_cover_every_batch(processes):
    batches = plan_batches([(label, 7) for label in range(4)], 3)
    shares = [shard(batches, p, processes) for p in range(processes)]
    indices = sorted(batch.index for share in shares for batch in share)
    assert indices == list(range(len(batches)))


# --- pipelines, saved and loaded by path -------------------------------------------------------------


def test_unconditional_ddim_is_the_stock_pipeline_batch_by_batch(tmp_path):
    source = saved(DDIMPipeline(tiny_unet(), DDIMScheduler(clip_sample=False)), tmp_path / "ddim")
    manifest = run(source, tmp_path / "out", num_samples=10, batch_size=4, steps=3, seed=7, npz=True)

    stock = quiet(DDIMPipeline.from_pretrained(source))
    expected = [
        stock(
            batch_size=n, generator=generator(7, "initial-noise", b), num_inference_steps=3, output_type="np"
        )
        for b, n in enumerate([4, 3, 3])
    ]
    images = read_images(tmp_path / "out")
    np.testing.assert_array_equal(images, as_png(np.concatenate([e.images for e in expected])))
    assert manifest["format"] == FORMAT and manifest["complete"]
    assert manifest["pipeline"]["class"] == "DDIMPipeline"
    assert manifest["pipeline"]["source"] == str(Path(source).resolve())
    assert manifest["settings"] == {
        "methods": [],
        "guidance_scale": None,  # DDIMPipeline takes none
        "steps": 3,
        "seed": 7,
        "batch_size": 4,
        "dtype": "fp32",
        "scheduler": None,
        "num_samples": 10,
    }
    assert [image["batch"] for image in manifest["images"]] == [0] * 4 + [1] * 3 + [2] * 3
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    with np.load(tmp_path / "out" / NPZ) as archive:
        assert sorted(archive.files) == ["images"]
        np.testing.assert_array_equal(archive["images"], images)


def test_dit_samples_balanced_classes_one_class_a_batch(tmp_path):
    source = saved(tiny_dit(), tmp_path / "dit")
    manifest = run(source, tmp_path / "out", num_samples=6, class_labels=(5, 1), batch_size=4, steps=2)

    labels = [image["class_label"] for image in manifest["images"]]
    assert labels == [5, 5, 5, 1, 1, 1] and manifest["settings"]["guidance_scale"] == 4.0
    assert [image["batch"] for image in manifest["images"]] == [0, 0, 0, 1, 1, 1]
    stock = quiet(DiffusionPipeline.from_pretrained(source))
    expected = [
        stock(class_labels=[label] * 3, generator=generator(0, "initial-noise", b), num_inference_steps=2,
              output_type="np").images
        for b, label in enumerate([5, 1])
    ]  # fmt: skip
    np.testing.assert_array_equal(read_images(tmp_path / "out"), as_png(np.concatenate(expected)))


def test_class_conditional_pipeline_draws_initial_and_step_noise_from_their_own_streams(tmp_path):
    """With a DDPM scheduler the steps draw noise: initial noise from ``initial-noise``, the steps'
    from ``step-noise`` — the stock call given those latents and that generator gives the same images."""
    pipe = AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), DDIMScheduler(clip_sample=False))
    source = saved(pipe, tmp_path / "cfg")
    options = dict(num_samples=4, batch_size=2, steps=3, guidance_scale=2.0, seed=3)
    manifest = run(source, tmp_path / "out", scheduler="DDPMScheduler", **options)

    assert [image["class_label"] for image in manifest["images"]] == [0, 0, 1, 2]
    stock = quiet(AtomClassConditionalPipeline.from_pretrained(source))
    from diffusers import DDPMScheduler

    stock.scheduler = DDPMScheduler.from_config(stock.scheduler.config)
    expected = []
    for b, labels in enumerate([[0, 0], [1, 2]]):
        latents = randn_tensor((2, 1, 8, 8), generator=generator(3, "initial-noise", b))
        out = stock(class_labels=labels, guidance_scale=2.0, num_inference_steps=3, latents=latents,
                    generator=generator(3, "step-noise", b), output_type="np")  # fmt: skip
        expected.append(out.images)
    np.testing.assert_array_equal(read_images(tmp_path / "out"), as_png(np.concatenate(expected)))


def test_stable_diffusion_samples_each_prompt_in_its_own_batches(tmp_path, sd_pipe):  # noqa: F811
    source = saved(sd_pipe, tmp_path / "sd")
    prompts = ("a cat", "a dog")
    manifest = run(source, tmp_path / "out", prompts=prompts, per_prompt=3, batch_size=4, steps=2)

    assert [image["prompt"] for image in manifest["images"]] == ["a cat"] * 3 + ["a dog"] * 3
    assert [image["batch"] for image in manifest["images"]] == [0, 0, 0, 1, 1, 1]
    assert manifest["settings"]["num_samples"] == 6 and manifest["settings"]["guidance_scale"] == 7.5
    stock = quiet(DiffusionPipeline.from_pretrained(source))
    expected = [
        stock(
            prompt,
            num_images_per_prompt=3,
            generator=generator(0, "initial-noise", b),
            num_inference_steps=2,
            output_type="np",
        ).images
        for b, prompt in enumerate(prompts)
    ]  # fmt: skip  (DDIM with η = 0 draws no step noise: the initial-noise generator is the only one)
    np.testing.assert_array_equal(read_images(tmp_path / "out"), as_png(np.concatenate(expected)))


# --- resuming -----------------------------------------------------------------------------------------


def test_a_rerun_skips_finished_batches_and_redoes_the_rest(tmp_path):
    source = saved(DDIMPipeline(tiny_unet(), DDIMScheduler()), tmp_path / "ddim")
    out = tmp_path / "out"
    options = dict(num_samples=9, batch_size=3, steps=2)
    first = run(source, out, **options)
    before = read_images(out)
    times = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}

    (out / "images" / "000004.png").unlink()  # batch 1 unfinished, as a killed run leaves it
    (out / "images" / ".000005.png.abc.tmp").write_bytes(b"half a file")
    again = run(source, out, **options)

    assert again == first
    np.testing.assert_array_equal(read_images(out), before)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(times)  # the stale .tmp is gone
    for name, time in times.items():  # batch 1 was sampled again, and only its missing file written
        assert (name == "000004.png") is ((out / "images" / name).stat().st_mtime_ns != time)


def test_methods_change_the_images_and_are_removed_after_the_run(tmp_path):
    pipe = quiet(DDIMPipeline(tiny_unet(), DDIMScheduler(clip_sample=False)))
    source = saved(pipe, tmp_path / "ddim")
    options = dict(num_samples=4, batch_size=4, steps=3)
    run(source, tmp_path / "plain", **options)
    manifest = sample(
        SampleConfig(source, tmp_path / "atom", methods=("atom:100",), progress=False, **options), pipe=pipe
    )
    assert manifest["settings"]["methods"] == ["atom:100"]
    assert not np.array_equal(read_images(tmp_path / "atom"), read_images(tmp_path / "plain"))
    sample(SampleConfig(source, tmp_path / "after", progress=False, **options), pipe=pipe)
    np.testing.assert_array_equal(read_images(tmp_path / "after"), read_images(tmp_path / "plain"))


def test_the_cli_writes_what_the_function_writes(tmp_path):
    from atomgen.cli import main

    source = saved(DDIMPipeline(tiny_unet(), DDIMScheduler()), tmp_path / "ddim")
    args = ["--num-samples", "3", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main(["sample", source, "--out", str(tmp_path / "cli"), *args]) == 0
    manifest = run(source, tmp_path / "api", num_samples=3, batch_size=2, steps=2)
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text()) == manifest
    np.testing.assert_array_equal(read_images(tmp_path / "cli"), read_images(tmp_path / "api"))


def test_an_atomgen_run_directory_samples_its_pipeline(tmp_path):
    saved(DDIMPipeline(tiny_unet(), DDIMScheduler()), tmp_path / "run" / "pipeline")
    (tmp_path / "run" / "config.yaml").write_text("train: {}\n")
    manifest = run(str(tmp_path / "run"), tmp_path / "out", num_samples=2, steps=2)
    assert manifest["pipeline"]["source"] == str((tmp_path / "run").resolve())
    assert len(list((tmp_path / "out" / "images").iterdir())) == 2


@pytest.mark.parametrize("module", [atomgen.sampling, atomgen.sampling.plan])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
