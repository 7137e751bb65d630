"""AtomClassConditionalPipeline (classifier-free guidance, diffusers guiders) and the sampling-time methods
on it: atom guidance (normalised or not), feature guidance, CADS, Particle Guidance. Tiny class-conditional
UNets built in the test; every test runs in seconds on a CPU."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    SkipLayerGuidance,
)
from test_pipelines import quiet, seed
from tiny import tiny_unet
from tiny_sd import energy_gradient, mean_pairwise_distance, no_hooks

import atomgen.pipelines.feature_guidance
import atomgen.pipelines.pipeline_atom_class_conditional
from atomgen import AtomSeparation
from atomgen.pipelines import (
    CADS,
    AtomClassConditionalPipeline,
    AtomDDIMPipeline,
    AtomGuidance,
    FeatureGuidance,
    ParticleGuidance,
)
from atomgen.pipelines.atom_guidance import GUIDANCE_KERNEL

NUM_CLASSES = 10
NULL = NUM_CLASSES  # the last class embedding
LABELS = [1, 1, 2, 2]  # two samples of each class: the batch methods act within a class
ONE_GROUP = [0, 0, 0, 0]  # where a closed form is checked over the whole conditional batch
STEPS = 6


def class_unet(**options):
    """The tiny 8×8 UNet of the other tests, with ``num_class_embeds = num_classes + 1``."""
    return tiny_unet(num_class_embeds=NUM_CLASSES + 1, **options)


def cfg_pipe(prediction_type: str = "epsilon", **options) -> AtomClassConditionalPipeline:
    scheduler = DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    return quiet(AtomClassConditionalPipeline(class_unet(), scheduler, **options))


def final_latents(pipe, labels=LABELS, steps: int = STEPS, **options) -> torch.Tensor:
    """The last latents before they are clamped to images: equivalence is checked on these."""
    captured = {}

    def keep(pipe, i, t, kwargs):
        captured["latents"] = kwargs["latents"]
        return kwargs

    pipe(
        class_labels=labels,
        num_inference_steps=steps,
        generator=seed(),
        output_type="pt",
        callback_on_step_end=keep,
        **options,
    )
    return captured["latents"]


def images(pipe, labels=LABELS, steps: int = STEPS, **options) -> torch.Tensor:
    return pipe(
        class_labels=labels, num_inference_steps=steps, generator=seed(), output_type="pt", **options
    ).images


def batch_sizes(unet) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Record the batch size of every UNet call."""
    sizes: list[int] = []
    handle = unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes, handle


# --- Classifier-free guidance against hand-written loops -------------------------------------------


def test_guidance_scale_one_is_the_conditional_model():
    pipe = cfg_pipe()
    sizes, handle = batch_sizes(pipe.unet)
    conditional = final_latents(pipe, guidance_scale=1.0)
    handle.remove()
    assert sizes == [len(LABELS)] * STEPS  # no doubled batch

    # the same UNet sampled conditionally by the Atom DDIM pipeline, and by hand
    ddim = quiet(AtomDDIMPipeline(pipe.unet, pipe.scheduler))
    stock = ddim(
        batch_size=len(LABELS),
        class_labels=LABELS,
        num_inference_steps=STEPS,
        generator=seed(),
        output_type="pt",
    ).images
    assert torch.equal(pipe.postprocess(conditional, "pt"), stock)
    latents, labels = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(LABELS)
    pipe.scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            latents = pipe.scheduler.step(
                pipe.unet(latents, t, class_labels=labels).sample, t, latents
            ).prev_sample
    assert torch.equal(conditional, latents)
    assert torch.equal(final_latents(pipe, guidance_scale=0.5), conditional)  # w ≤ 1: conditional only


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_classifier_free_guidance_matches_a_hand_written_loop(prediction_type):
    pipe, w = cfg_pipe(prediction_type), 3.0
    sizes, handle = batch_sizes(pipe.unet)
    guided = final_latents(pipe, guidance_scale=w)
    handle.remove()
    assert sizes == [2 * len(LABELS)] * STEPS  # one batched call per step

    latents, labels = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(LABELS)
    null = torch.full_like(labels, NULL)
    pipe.scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            output = pipe.unet(
                torch.cat([latents, latents]), t, class_labels=torch.cat([null, labels])
            ).sample
            uncond, cond = output.chunk(2)
            latents = pipe.scheduler.step(uncond + w * (cond - uncond), t, latents).prev_sample
    torch.testing.assert_close(guided, latents, rtol=0, atol=1e-6)
    assert not torch.allclose(guided, final_latents(pipe, guidance_scale=1.0))


# --- Equivalence: strength 0 and removed handles are the stock pipeline ----------------------------


@pytest.mark.parametrize(
    "install",
    [
        lambda pipe, strength: AtomGuidance(pipe, atom_scale=strength * 100.0),
        lambda pipe, strength: AtomGuidance(pipe, atom_scale=strength * 0.3, normalize=True),
        lambda pipe, strength: FeatureGuidance(pipe, feature_scale=strength * 0.3),
    ],
    ids=["atom", "atom-normalized", "feature"],
)
def test_strength_zero_and_removed_handle_are_stock(install):
    pipe = cfg_pipe()
    stock = final_latents(pipe)
    with install(pipe, 0.0):
        assert torch.equal(final_latents(pipe), stock)
    handle = install(pipe, 1.0)
    assert not torch.allclose(final_latents(pipe), stock)
    handle.remove()
    assert torch.equal(final_latents(pipe), stock) and no_hooks(pipe.unet)
    # the pipeline's own option is the same guidance
    with AtomGuidance(pipe, atom_scale=100.0):
        expected = final_latents(pipe)
    assert torch.equal(final_latents(pipe, atom_scale=100.0), expected) and no_hooks(pipe.unet)


# --- Each method spreads the batch, more with more strength, and a negative value contracts it ----

# An untrained UNet: v-prediction keeps the sampler stable (x̂0 = α z − σ v stays bounded) for the latent
# methods. Feature guidance changes the prediction, not z_t, and on this untrained UNet only the last
# steps of a sample-prediction model carry that change to the pixels; its effect is small (a few
# percent) but monotone. Its effect where it acts, at the site, is checked to the formula below. Four
# classes made one group (groups=): the whole batch is pushed apart, as one class would be.
SPREAD_CASES = {
    "atom": (
        "v_prediction",
        lambda p, s: AtomGuidance(p, atom_scale=s, groups=ONE_GROUP),
        (-30.0, 0.0, 30.0, 100.0, 300.0),
    ),
    "atom-normalized": (
        "v_prediction",
        lambda p, s: AtomGuidance(p, atom_scale=s, normalize=True, groups=ONE_GROUP),
        (-0.1, 0.0, 0.1, 0.3, 1.0),
    ),
    "feature": (
        "sample",
        lambda p, s: FeatureGuidance(p, feature_scale=s, active_range=(0.0, 1.0), groups=ONE_GROUP),
        (-0.25, 0.0, 0.1, 0.25, 0.5),
    ),
}


@pytest.mark.parametrize("case", list(SPREAD_CASES))
def test_strength_spreads_the_batch_in_pixel_space(case):
    prediction_type, install, strengths = SPREAD_CASES[case]
    pipe = cfg_pipe(prediction_type)
    spread = {}
    for strength in strengths:
        with install(pipe, strength):
            samples = images(pipe, labels=[1, 2, 3, 4], guidance_scale=2.0)
            spread[strength] = mean_pairwise_distance(samples)
    values = list(spread.values())
    assert values == sorted(values) and len(set(values)) == len(values), spread
    assert spread[strengths[-1]] > 1.02 * spread[0.0], spread


# --- One denoiser call against the formulas ----------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_normalized_atom_guidance_matches_the_formula(prediction_type):
    scheduler = DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    pipe = quiet(DDIMPipeline(tiny_unet(), scheduler))
    z, t, gamma = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(700), 0.2
    with torch.no_grad():
        stock = pipe.unet(z, t).sample
        with AtomGuidance(pipe, atom_scale=gamma, active_range=(0.0, 1.0), normalize=True):
            guided = pipe.unet(z, t).sample
    alpha_bar = pipe.scheduler.alphas_cumprod[700].double()
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    prediction, z64 = stock.double(), z.double()
    eps = {
        "epsilon": prediction,
        "v_prediction": alpha * prediction + sigma * z64,
        "sample": (z64 - alpha * prediction) / sigma,
    }[prediction_type]
    grad = energy_gradient(pipe.unet, "mid_block", z, t).double()
    norm = lambda x: x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    delta_eps = gamma * norm(eps) * grad / norm(grad)  # Δε_A = γ ‖ε̂_A‖ g_A / ‖g_A‖
    expected = {
        "epsilon": delta_eps,
        "v_prediction": delta_eps / alpha,
        "sample": -sigma / alpha * delta_eps,
    }[prediction_type]
    torch.testing.assert_close((guided - stock).double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm(delta_eps), gamma * norm(eps))


def test_normalized_guidance_under_cfg_uses_the_conditional_half():
    pipe, gamma = cfg_pipe(), 0.2
    z, t = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(700)
    z2, labels = torch.cat([z, z]), torch.tensor([NULL] * 4 + LABELS)
    pipe._do_classifier_free_guidance = True  # as inside __call__, at a guided step
    with torch.no_grad():
        stock = pipe.unet(z2, t, class_labels=labels).sample
        with AtomGuidance(pipe, atom_scale=gamma, active_range=(0.0, 1.0), normalize=True, groups=ONE_GROUP):
            guided = pipe.unet(z2, t, class_labels=labels).sample
    pipe._do_classifier_free_guidance = False
    delta_uncond, delta_cond = (guided - stock).chunk(2)
    torch.testing.assert_close(delta_uncond, delta_cond)  # the same correction for both halves
    grad = energy_gradient(pipe.unet, "mid_block", z, t, class_labels=torch.tensor(LABELS))
    eps_cond = stock[4:]
    norm = lambda x: x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    torch.testing.assert_close(delta_cond, gamma * norm(eps_cond) * grad / norm(grad), rtol=1e-4, atol=1e-6)


def test_feature_guidance_moves_the_conditional_half_by_the_formula():
    pipe, gamma = cfg_pipe(), 0.3
    z, t = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(700)
    z2, labels = torch.cat([z, z]), torch.tensor([NULL] * 4 + LABELS)
    captured = {}
    hook = pipe.unet.mid_block.register_forward_hook(lambda m, i, o: captured.update(h=o))
    with torch.no_grad():
        stock = pipe.unet(z2, t, class_labels=labels).sample
    hook.remove()
    h = captured["h"]

    # by hand: h_A ← h_A − γ ‖h_A‖ g_A / ‖g_A‖ on the conditional half, g = ∇_h Σ_A e_A
    separation = AtomSeparation(dim=16, learn_roles=False, kernel=GUIDANCE_KERNEL)
    with torch.enable_grad():
        leaf = h[4:].detach().requires_grad_()
        (g,) = torch.autograd.grad(separation(leaf).energy.sum(), leaf)
    norm = lambda x: x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    moved = h[4:] - gamma * norm(h[4:]) * g / norm(g)
    assert separation(moved).energy.sum() < separation(h[4:]).energy.sum()
    assert mean_pairwise_distance(moved) > mean_pairwise_distance(h[4:])
    hook = pipe.unet.mid_block.register_forward_hook(lambda m, i, o: torch.cat([o[:4], moved]))
    with torch.no_grad():
        expected = pipe.unet(z2, t, class_labels=labels).sample
    hook.remove()

    pipe._do_classifier_free_guidance = True
    with (
        torch.no_grad(),
        FeatureGuidance(pipe, feature_scale=gamma, active_range=(0.0, 1.0), groups=ONE_GROUP) as handle,
    ):
        guided = pipe.unet(z2, t, class_labels=labels).sample
    pipe._do_classifier_free_guidance = False
    assert isinstance(handle, FeatureGuidance) and handle.site == "mid_block"
    assert torch.equal(guided[:4], stock[:4])  # the unconditional half is not moved
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided[4:], stock[4:])


# --- diffusers guiders ---------------------------------------------------------------------------------


def test_classifier_free_guidance_guider_equals_the_plain_path():
    pipe = cfg_pipe()
    plain = final_latents(pipe, guidance_scale=3.0)
    guider = ClassifierFreeGuidance(guidance_scale=3.0, start=0.0, stop=1.0)
    assert torch.equal(final_latents(pipe, guider=guider), plain)
    assert torch.equal(final_latents(pipe, guider=guider, guidance_scale=3.0), plain)  # the same: no conflict
    assert not pipe.do_classifier_free_guidance  # outside a call
    assert torch.equal(final_latents(pipe), final_latents(pipe, guidance_scale=4.0))  # DiTPipeline's default


def test_a_guidance_scale_that_contradicts_the_guider_is_refused():
    pipe = cfg_pipe()
    with pytest.raises(
        ValueError,
        match=r"guidance_scale=7\.0 was passed beside guider=ClassifierFreeGuidance, which has its own "
        r"guidance_scale=3\.0.*set the scale on it",
    ):
        pipe(class_labels=LABELS, guidance_scale=7.0, guider=ClassifierFreeGuidance(guidance_scale=3.0))


def test_interval_guider_guides_only_inside_its_steps():
    pipe = cfg_pipe()
    plain = final_latents(pipe, guidance_scale=3.0)
    guider = ClassifierFreeGuidance(guidance_scale=3.0, start=0.2, stop=0.7)  # steps [1, 4) of 6
    sizes, handle = batch_sizes(pipe.unet)
    interval = final_latents(pipe, guider=guider)
    handle.remove()
    assert sizes == [4, 8, 8, 8, 4, 4]  # unguided steps compute the conditional batch alone
    assert torch.isfinite(interval).all() and not torch.allclose(interval, plain)
    with AtomGuidance(pipe, atom_scale=100.0):  # atom guidance follows the doubled and the single batches
        assert torch.isfinite(final_latents(pipe, guider=guider)).all()


def test_adaptive_projected_guidance():
    pipe = cfg_pipe()
    plain = final_latents(pipe, guidance_scale=3.0)
    # η = 1 keeps the parallel part, no rescaling, no momentum: APG is CFG (here, through x̂0 and back)
    same = AdaptiveProjectedGuidance(guidance_scale=3.0, eta=1.0, adaptive_projected_guidance_rescale=0.0)
    torch.testing.assert_close(final_latents(pipe, guider=same), plain, rtol=1e-4, atol=1e-4)
    apg = AdaptiveProjectedGuidance(guidance_scale=3.0, eta=0.0, adaptive_projected_guidance_momentum=-0.5)
    first = final_latents(pipe, guider=apg)
    assert torch.isfinite(first).all() and not torch.allclose(first, plain, atol=1e-3)
    assert torch.equal(final_latents(pipe, guider=apg), first)  # momentum starts afresh at every call


# --- The peers on the CFG pipeline ---------------------------------------------------------------------


def test_cads_and_particle_guidance_run_on_it():
    pipe = cfg_pipe("v_prediction")
    stock = final_latents(pipe)
    with CADS(pipe, generator=seed(1)):
        cads = final_latents(pipe)
    with ParticleGuidance(pipe, pg_scale=0.3, normalize=True) as handle:
        particle = final_latents(pipe)
    assert "normalize=True" in repr(handle)
    for result in (cads, particle):
        assert torch.isfinite(result).all() and not torch.allclose(result, stock)
    assert torch.equal(final_latents(pipe), stock) and no_hooks(pipe.unet)


# --- save_pretrained / from_pretrained in a fresh process --------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, torch
    from diffusers import DDIMScheduler
    from atomgen import AtomSeparation
    from atomgen.pipelines import AtomClassConditionalPipeline

    root = sys.argv[1]
    expected = torch.load(f"{root}/expected.pt")
    pipe = AtomClassConditionalPipeline.from_pretrained(f"{root}/pipe")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DDIMScheduler) and not pipe.scheduler.config.clip_sample
    assert isinstance(pipe.separation, AtomSeparation) and pipe.config.separation_site == "down_blocks.1"
    assert (pipe.num_classes, pipe.null_class_label) == (10, 10)
    images = pipe(class_labels=[1, 1, 2, 2], num_inference_steps=4, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt", atom_scale=50.0).images
    assert torch.equal(images, expected), (images - expected).abs().max()

    trained = AtomClassConditionalPipeline.from_pretrained(f"{root}/stock_layout")  # as `atomgen train` writes
    assert isinstance(trained.scheduler, DDIMScheduler) and isinstance(trained.separation, AtomSeparation)
    assert trained.null_class_label == 10
    print("loaded")
    """
)


@pytest.mark.slow
def test_save_and_load_round_trip_in_a_fresh_process(tmp_path):
    separation = AtomSeparation(dim=16, max_grid=4)
    pipe = quiet(
        AtomClassConditionalPipeline(
            class_unet(),
            DDPMScheduler(clip_sample=False),  # converted to DDIM
            separation=separation,
            separation_site="down_blocks.1",
        )
    )
    pipe.save_pretrained(tmp_path / "pipe")
    DDPMPipeline(pipe.unet, DDPMScheduler()).save_pretrained(tmp_path / "stock_layout")
    separation.save_pretrained(tmp_path / "stock_layout" / "separation")
    expected = pipe(
        class_labels=LABELS,
        num_inference_steps=4,
        guidance_scale=3.0,
        generator=seed(),
        output_type="pt",
        atom_scale=50.0,
    ).images
    torch.save(expected, tmp_path / "expected.pt")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().endswith("loaded")


# --- Clear errors --------------------------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(ValueError, match="num_class_embeds"):
        AtomClassConditionalPipeline(tiny_unet(), DDIMScheduler())
    pipe = cfg_pipe()
    with pytest.raises(ValueError, match="pass class_labels"):
        pipe(class_labels=None)
    with pytest.raises(ValueError, match=r"\[0, 9\].*got \[-1, 11\]"):
        pipe(class_labels=[0, 11, -1])
    with pytest.raises(ValueError, match="integers"):
        pipe(class_labels=[0.5, 1.0])
    with pytest.raises(ValueError, match="empty"):
        pipe(class_labels=[])
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(class_labels=LABELS, guidance_scale=float("nan"))
    with pytest.raises(TypeError, match=r"\['batch_size'\]; .*number of images is len\(class_labels\)"):
        pipe(batch_size=4)
    with pytest.raises(TypeError, match="diffusers guider"):
        pipe(class_labels=LABELS, guider=lambda cond, uncond: cond)
    with pytest.raises(TypeError, match="pred_cond_skip"):
        pipe(class_labels=LABELS, guider=SkipLayerGuidance(skip_layer_guidance_layers=[0]))
    with pytest.raises(ValueError, match="nothing to separate"), FeatureGuidance(pipe, feature_scale=0.3):
        pipe(class_labels=[3], num_inference_steps=2)
    with pytest.raises(ValueError, match="feature_scale must be a finite number"):
        FeatureGuidance(pipe, feature_scale=float("inf"))
    with pytest.raises(TypeError, match="normalize"):
        AtomGuidance(pipe, atom_scale=1.0, normalize="yes")
    assert no_hooks(pipe.unet)
    # the null label itself samples unconditionally
    assert final_latents(pipe, labels=[NULL, NULL], guidance_scale=1.0).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "module", [atomgen.pipelines.pipeline_atom_class_conditional, atomgen.pipelines.feature_guidance]
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
