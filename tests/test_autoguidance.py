"""AutoGuidance: ε_guide + w (ε − ε_guide), checked against the formula computed by hand."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from tiny import quiet, tiny_conditional_unet, tiny_unet
from tiny_sd import seed, tiny_stable_diffusion

from atomgen.pipelines import AtomClassConditionalPipeline, AutoGuidance
from atomgen.pipelines.denoiser_hook import prediction_tensor


def class_pipe(**unet) -> AtomClassConditionalPipeline:
    scheduler = DDIMScheduler(clip_sample=False)
    return quiet(AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4, **unet), scheduler))


@pytest.mark.parametrize("scale", [None, 1.5])
def test_one_step_is_the_formula_on_class_labels(tmp_path, scale):
    pipe, weak = class_pipe(), class_pipe(block_out_channels=(4, 8))
    weak.save_pretrained(tmp_path / "weak")
    labels, z, w = torch.tensor([1, 2]), torch.randn(2, 1, 8, 8, generator=seed()), 3.0
    captured = {}
    run = dict(class_labels=labels, latents=z, guidance_scale=w, num_inference_steps=2, output_type="pt")
    latents_spy = pipe.unet.register_forward_pre_hook(lambda m, args: captured.update(z=args[0][:2]))
    with AutoGuidance(pipe, guide=tmp_path / "weak", autoguidance_scale=scale) as handle:
        spy = pipe.unet.register_forward_hook(lambda m, a, out: captured.update(out=prediction_tensor(out)))
        pipe(**run)
        spy.remove()
    latents_spy.remove()
    assert handle.guided_calls == 2
    t = pipe.scheduler.timesteps[-1]
    z = captured["z"]
    with torch.no_grad():
        eps = pipe.unet(z, t, class_labels=labels).sample
        eps_guide = weak.unet(z, t, class_labels=labels).sample
    expected = eps_guide + (w if scale is None else scale) * (eps - eps_guide)
    uncond, cond = captured["out"].chunk(2)  # the last step's halves, as the pipeline combines them
    torch.testing.assert_close(uncond + w * (cond - uncond), expected, rtol=1e-5, atol=1e-5)


def test_stable_diffusion_guided_by_a_smaller_unet(tmp_path):
    pipe = tiny_stable_diffusion(tmp_path)
    weak = tiny_conditional_unet(block_out_channels=(4, 8), norm_num_groups=2)
    z, prompts, w = torch.randn(2, 4, 8, 8, generator=seed()), torch.randn(4, 5, 8, generator=seed(1)), 5.0
    pipe._guidance_scale = w  # as inside a __call__ with classifier-free guidance
    with torch.no_grad():
        eps = pipe.unet(z, 700, encoder_hidden_states=prompts[2:]).sample
        eps_guide = weak(z, 700, encoder_hidden_states=prompts[2:]).sample
        with AutoGuidance(pipe, guide=weak):
            uncond, cond = pipe.unet(torch.cat([z, z]), 700, encoder_hidden_states=prompts).sample.chunk(2)
    torch.testing.assert_close(
        uncond + w * (cond - uncond), eps_guide + w * (eps - eps_guide), rtol=1e-5, atol=1e-5
    )
    images = pipe(
        "a dog", num_images_per_prompt=2, num_inference_steps=2, height=16, width=16, output_type="latent"
    )
    assert torch.isfinite(images.images).all()


def test_a_guide_of_another_shape_is_refused(tmp_path):
    pipe = class_pipe()
    with pytest.raises(ValueError, match=r"num_class_embeds=6 \(denoiser: 4\)"):
        AutoGuidance(pipe, guide=tiny_unet(num_class_embeds=6))
    with pytest.raises(ValueError, match="same kind of model"):
        AutoGuidance(pipe, guide=tiny_conditional_unet())
    with pytest.raises(ValueError, match="is not a folder"):
        AutoGuidance(pipe, guide=tmp_path / "missing")
    with pytest.raises(ValueError, match="own denoiser"):
        AutoGuidance(pipe, guide=pipe)
