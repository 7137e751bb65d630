"""Batch-coupled methods act within groups: samples that share their conditioning (or ``groups=``)."""

from __future__ import annotations

import pytest
import tiny_sd
import torch
from diffusers import DDIMScheduler
from tiny import quiet, tiny_unet
from tiny_sd import ddim, sample, seed

from atomgen.pipelines import (
    AtomClassConditionalPipeline,
    AtomGuidance,
    FeatureGuidance,
    ParticleGuidance,
)

METHODS = {
    "atom": lambda pipe: AtomGuidance(pipe, atom_scale=0.3, normalize=True, active_range=(0.0, 1.0)),
    "feature": lambda pipe: FeatureGuidance(pipe, feature_scale=0.3, active_range=(0.0, 1.0)),
    "pg": lambda pipe: ParticleGuidance(pipe, pg_scale=1.0, active_range=(0.0, 1.0)),
}

sd_pipe = tiny_sd.sd_pipe  # the fixture: a tiny Stable Diffusion, saved and reloaded


def sd_latents(pipe, prompts: list[str]) -> torch.Tensor:
    latents = torch.randn(2, 4, 8, 8, generator=seed(3)).repeat(len(prompts) // 2, 1, 1, 1)
    return pipe(
        prompts,
        latents=latents,
        num_inference_steps=3,
        guidance_scale=5.0,
        height=16,
        width=16,
        output_type="latent",
    ).images


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prompts_are_guided_apart_from_each_other(sd_pipe, method):
    # The dog samples of [dog, dog] equal those of [dog, dog, cat, cat] from the same latents, bit for bit.
    stock = sd_latents(sd_pipe, ["a dog"] * 2)
    with METHODS[method](sd_pipe) as handle:
        alone = sd_latents(sd_pipe, ["a dog"] * 2)
        mixed = sd_latents(sd_pipe, ["a dog"] * 2 + ["a cat"] * 2)
    assert handle.guided_calls == 6 and not torch.equal(alone, stock)
    assert torch.equal(mixed[:2], alone)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_class_labels_are_guided_apart_from_each_other(method):
    pipe = quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), DDIMScheduler()))
    latents = torch.randn(2, 1, 8, 8, generator=seed(4))

    def run(labels):
        return pipe(
            class_labels=labels,
            latents=latents.repeat(len(labels) // 2, 1, 1, 1),
            guidance_scale=2.0,
            num_inference_steps=3,
            output_type="pt",
        ).images

    with METHODS[method](pipe):
        alone, mixed = run([1, 1]), run([1, 1, 2, 2])
    assert torch.equal(mixed[:2], alone)


def test_a_group_of_one_is_refused_by_name(sd_pipe):
    with (
        AtomGuidance(sd_pipe, atom_scale=1.0),
        pytest.raises(ValueError, match=r"group 0 of 2 \(sample \[0\]"),
    ):
        sd_pipe(["a dog", "a cat"], num_images_per_prompt=1, num_inference_steps=2, height=16, width=16)


def test_groups_override_the_conditioning():
    pipe = ddim()
    z = torch.randn(2, 1, 8, 8, generator=seed(5))
    with torch.no_grad():
        with ParticleGuidance(pipe, pg_scale=1.0, active_range=(0.0, 1.0)):
            alone = pipe.unet(z, 900).sample
        with ParticleGuidance(pipe, pg_scale=1.0, active_range=(0.0, 1.0), groups=[0, 0, 1, 1]):
            mixed = pipe.unet(torch.cat([z, z]), 900).sample
    assert not torch.equal(alone, pipe.unet(z, 900).sample)
    torch.testing.assert_close(mixed, torch.cat([alone, alone]))  # each group as if alone
    with (
        ParticleGuidance(pipe, pg_scale=1.0, groups=[0, 1, 1]),
        pytest.raises(ValueError, match="groups= for 3"),
    ):
        sample(pipe, batch_size=4)
