"""GuidanceInterval, APG and AutoGuidance (methods that edit CFG's two predictions): against diffusers'
guiders, and on the transformer pipelines (SD3, Flux with true CFG, DiT)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance
from tiny import PROMPT_WIDTH, quiet, tiny_dit, tiny_flux, tiny_sd3, tiny_unet
from tiny_sd import seed

from atomgen.pipelines import APG, AtomClassConditionalPipeline, AutoGuidance, GuidanceInterval

RUN = dict(class_labels=[1, 2, 2], num_inference_steps=6, output_type="pt")


@pytest.fixture(scope="module")
def pipe():
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    return quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), scheduler))


@pytest.mark.parametrize(("start", "stop"), [(0.3, 1.0), (0.0, 0.5), (0.2, 0.7)])
def test_guidance_interval_is_diffusers_cfg_with_start_and_stop(pipe, start, stop):
    guider = ClassifierFreeGuidance(guidance_scale=3.0, start=start, stop=stop)
    expected = pipe(generator=seed(), guider=guider, **RUN).images
    with GuidanceInterval(pipe, start=start, stop=stop) as handle:
        images = pipe(generator=seed(), guidance_scale=3.0, **RUN).images
    steps = 6 - (int(stop * 6) - int(start * 6))
    assert handle.guided_calls == steps
    # the guider computes an unguided step as a batch of B, the pipeline as 2B: equal up to rounding
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    with GuidanceInterval(pipe, start=0.0, stop=1.0):  # everywhere: the stock pipeline, bit for bit
        assert torch.equal(
            pipe(generator=seed(), guidance_scale=3.0, **RUN).images,
            pipe(generator=seed(), guidance_scale=3.0, **RUN).images,
        )


@pytest.mark.parametrize(("eta", "momentum", "threshold"), [(0.0, None, 15.0), (0.5, -0.5, 0.05)])
def test_apg_is_diffusers_apg(pipe, eta, momentum, threshold):
    # c + (w − 1) N in x̂_0 space: diffusers' original formulation at guidance_scale = w − 1
    guider = AdaptiveProjectedGuidance(
        guidance_scale=2.0,
        eta=eta,
        adaptive_projected_guidance_momentum=momentum,
        adaptive_projected_guidance_rescale=threshold,
        use_original_formulation=True,
    )
    expected = pipe(generator=seed(), guider=guider, **RUN).images
    with APG(pipe, eta=eta, momentum=momentum, norm_threshold=threshold) as handle:
        images = pipe(generator=seed(), guidance_scale=3.0, **RUN).images
    stock = pipe(generator=seed(), guidance_scale=3.0, **RUN).images
    assert handle.guided_calls == 6 and not torch.allclose(images, stock, atol=1e-4)
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)


def test_interval_and_apg_on_dit():
    dit = tiny_dit()
    run = dict(class_labels=[1, 1], num_inference_steps=4, guidance_scale=3.0, output_type="np")
    stock = dit(generator=seed(), **run).images
    with GuidanceInterval(dit, start=0.5) as handle:
        assert not (dit(generator=seed(), **run).images == stock).all()
    assert handle.guided_calls == 2
    with APG(dit, eta=1.0, norm_threshold=0.0):  # η = 1, no momentum or clipping: CFG itself
        assert abs(dit(generator=seed(), **run).images - stock).max() < 1e-5


def test_an_unguided_pipeline_is_refused():
    pipe = DDIMPipeline(tiny_unet(), DDIMScheduler())
    for method in (GuidanceInterval, APG):
        with pytest.raises(ValueError, match="does no classifier-free guidance"):
            method(pipe)


def transformer_run(name: str, pipe, scale: float) -> torch.Tensor:
    """Final latents (DiT: images) of two samples of one prompt or class, at CFG scale ``scale``."""
    generator = seed(1)
    if name == "dit":
        return pipe(
            [2, 2], guidance_scale=scale, num_inference_steps=3, generator=generator, output_type="pt"
        ).images
    embeds = {
        "prompt_embeds": torch.randn(1, 5, PROMPT_WIDTH, generator=seed(7)).repeat(2, 1, 1),
        "pooled_prompt_embeds": torch.randn(1, PROMPT_WIDTH, generator=seed(8)).repeat(2, 1),
    }
    negative = {f"negative_{k}": torch.zeros_like(v) for k, v in embeds.items()}
    options = dict(num_inference_steps=3, height=8, width=8, output_type="latent", generator=generator)
    scale_name = "true_cfg_scale" if name == "flux" else "guidance_scale"
    return pipe(**embeds, **negative, **{scale_name: scale}, **options).images


@pytest.mark.parametrize("name", ["sd3", "flux", "dit"])
def test_cfg_methods_on_transformer_pipelines(name):
    pipe = {"sd3": tiny_sd3, "flux": tiny_flux, "dit": tiny_dit}[name]()
    stock, unguided = transformer_run(name, pipe, 3.0), transformer_run(name, pipe, 1.0)
    with GuidanceInterval(pipe, start=0.0, stop=0.1) as handle:  # no step inside: CFG off everywhere
        torch.testing.assert_close(transformer_run(name, pipe, 3.0), unguided, rtol=1e-4, atol=1e-5)
    assert handle.guided_calls == 3
    with APG(pipe, eta=1.0, norm_threshold=0.0) as handle:  # η = 1, no momentum or clipping: CFG
        torch.testing.assert_close(transformer_run(name, pipe, 3.0), stock, rtol=1e-4, atol=1e-5)
    assert handle.guided_calls == 3
    weak = copy.deepcopy(pipe.transformer)
    torch.manual_seed(5)
    for parameter in weak.parameters():
        parameter.data += 0.05 * torch.randn_like(parameter)
    with AutoGuidance(pipe, guide=weak) as handle:
        guided = transformer_run(name, pipe, 3.0)
    assert handle.guided_calls == 3 and torch.isfinite(guided).all() and not torch.allclose(guided, stock)
