"""What every method shares through DenoiserHook: inference mode, guided_calls, the no-op warning, aliases."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DDIMScheduler
from tiny import quiet, tiny_unet
from tiny_sd import ddim, img2img, sample, seed, tiny_stable_diffusion

from atomgen.pipelines import (
    CADS,
    AtomClassConditionalPipeline,
    AtomGuidance,
    FeatureGuidance,
    ParticleGuidance,
    SparseAtomGuidance,
    guide,
    guide_features,
)

GRADIENT_METHODS = {
    "atom": lambda pipe: AtomGuidance(pipe, atom_scale=30.0, active_range=(0.0, 1.0)),
    "feature": lambda pipe: FeatureGuidance(pipe, feature_scale=0.3, active_range=(0.0, 1.0)),
    "pg": lambda pipe: ParticleGuidance(pipe, pg_scale=1.0, active_range=(0.0, 1.0)),
    "sparse": lambda pipe: SparseAtomGuidance(
        pipe, atom_scale=1.0, radius=2.0, normalize=True, active_range=(0, 1)
    ),
}


@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS))
def test_gradient_methods_work_under_inference_mode(method):
    pipe = ddim("v_prediction")
    with GRADIENT_METHODS[method](pipe) as handle:
        expected = sample(pipe, batch_size=4, steps=3)
        with torch.inference_mode():
            images = sample(pipe, batch_size=4, steps=3)
    assert handle.guided_calls == 6
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-6)


def test_guided_calls_count_and_a_run_that_guides_nothing_warns(tmp_path, caplog):
    pipe = img2img(tiny_stable_diffusion(tmp_path))
    image = torch.rand(1, 3, 16, 16, generator=seed())
    run = dict(image=image, num_images_per_prompt=2, num_inference_steps=10, output_type="latent")
    stock = pipe("a dog", strength=0.3, generator=seed(), **run).images
    with AtomGuidance(pipe, atom_scale=100.0) as handle, caplog.at_level(logging.WARNING):
        guided = pipe("a dog", strength=0.3, generator=seed(), **run).images
        assert handle.guided_calls == 0 and torch.equal(guided, stock)
        assert "guided none of the 3 denoiser calls" in caplog.text
        assert "active_range=(0.4, 1.0)" in caplog.text and "`strength`" in caplog.text
        caplog.clear()
        pipe("a dog", strength=0.9, generator=seed(), **run)
        assert handle.guided_calls > 0 and "guided none" not in caplog.text
    assert "maybe_free_model_hooks" not in vars(pipe)  # the watch is gone with the last handle


def test_deprecated_aliases_warn_and_still_work():
    pipe = ddim()
    with (
        pytest.warns(FutureWarning, match="AtomGuidance"),
        guide(pipe, strength=2.0, interval=(0.2, 1.0)) as old,
    ):
        assert old.scale == 2.0 and old.active_range == (0.2, 1.0)
    with (
        pytest.warns(FutureWarning, match="active_range"),
        AtomGuidance(pipe, 2.0, interval=(0.2, 1.0)) as handle,
    ):
        assert handle.active_range == (0.2, 1.0)
    with pytest.warns(FutureWarning, match="FeatureGuidance"), guide_features(pipe, 0.2) as feature:
        assert feature.scale == 0.2
    with pytest.warns(FutureWarning, match="pg_scale"), ParticleGuidance(pipe, strength=1.0) as pg:
        assert pg.scale == 1.0
    with pytest.raises(TypeError, match="both atom_scale= and its deprecated alias strength="):
        AtomGuidance(pipe, atom_scale=1.0, strength=2.0)


def test_a_site_that_ignores_the_latents_is_refused():
    pipe = ddim()
    with (
        FeatureGuidance(pipe, feature_scale=0.3, site="time_embedding"),
        pytest.raises(ValueError, match="do not depend on the latents"),
    ):
        sample(pipe, batch_size=3, steps=2)


def test_cads_with_no_noise_is_the_identity():
    pipe = quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), DDIMScheduler()))
    run = dict(class_labels=[1, 2], guidance_scale=2.0, num_inference_steps=5, output_type="pt")
    stock = pipe(generator=seed(), **run).images
    with CADS(pipe, noise_scale=0.0, tau1=0.1, tau2=0.2) as cads:
        assert torch.equal(pipe(generator=seed(), **run).images, stock)  # γ(t) = 0 over most steps
    with CADS(pipe, noise_scale=0.0, tau1=0.1, tau2=0.2, psi=0.5):  # ψ < 1 keeps a finite limit
        assert torch.isfinite(pipe(generator=seed(), **run).images).all()
    assert "noise_scale=0.0" in repr(cads)
