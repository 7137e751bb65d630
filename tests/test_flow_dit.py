"""Rectified-flow training (``model.objective: flow``) and the DiT family (``model.family: dit``): the
objective's closed form, tiny runs that export pipelines diffusers reloads, and the class-conditional
pipeline sampling a flow model and a DiT against hand-written loops. Seconds on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance
from test_train import tiny
from tiny import tiny_unet, tiny_vae

from atomgen import AtomSeparation
from atomgen.pipelines import (
    CADS,
    AtomClassConditionalPipeline,
    AtomDDIMPipeline,
    AtomDDPMPipeline,
    AtomGuidance,
    FeatureGuidance,
    ParticleGuidance,
)
from atomgen.train import train
from atomgen.train.config import ConfigError
from atomgen.train.loop import _DenoiserObjective
from atomgen.train.models import build_model, build_scheduler, default_site

LABELS = [1, 1, 2, 2]  # two samples of each class: the batch methods act within a class
STEPS = 5
DIT = ("model.family=dit", "model.dit_layers=2", "model.dit_heads=2", "model.dit_head_dim=8")
CONDITIONAL = ("model.num_classes=10", "train.label_dropout=0.3")


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def tiny_dit(**options) -> DiTTransformer2DModel:
    """A two-block 8×8 one-channel DiT (16-wide tokens) for ten classes and the null label."""
    torch.manual_seed(0)
    defaults = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    return DiTTransformer2DModel(**(defaults | options)).eval()


def flow_pipe(denoiser: str = "transformer", **options) -> AtomClassConditionalPipeline:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    if denoiser == "transformer":
        pipe = AtomClassConditionalPipeline(None, scheduler, transformer=tiny_dit(**options))
    else:
        pipe = AtomClassConditionalPipeline(tiny_unet(num_class_embeds=11), scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_latents(pipe: AtomClassConditionalPipeline, **options) -> torch.Tensor:
    captured = {}

    def keep(pipe, i, t, kwargs):
        captured["latents"] = kwargs["latents"]
        return kwargs

    pipe(
        class_labels=LABELS,
        num_inference_steps=STEPS,
        generator=seed(),
        output_type="pt",
        callback_on_step_end=keep,
        **options,
    )
    return captured["latents"]


# --- the objective -------------------------------------------------------------------------------------


def test_flow_objective_is_the_rectified_flow_velocity(tmp_path):
    """x_σ = (1 − σ) x_0 + σ ε at the timestep σ · T, and the target v = ε − x_0: a denoiser that returns
    exactly that velocity has zero loss."""
    from accelerate import Accelerator

    from atomgen.train.loop import _Draws

    config = tiny(tmp_path, "model.objective=flow")
    draws = _Draws(torch.arange(16), config.data.load(), 0, 0, 0, config, Accelerator(cpu=True))
    sigma = draws.timesteps / 1000
    assert draws.timesteps.is_floating_point() and ((sigma > 0) & (sigma < 1)).all()

    def velocity(noisy, timestep, class_labels=None):
        assert torch.equal(timestep, draws.timesteps) and class_labels is None
        s = (timestep / 1000).view(-1, 1, 1, 1)
        torch.testing.assert_close(noisy, (1 - s) * draws.images + s * draws.noise)
        return SimpleNamespace(sample=draws.noise - draws.images)

    objective = _DenoiserObjective(velocity, build_scheduler(config.model))
    assert objective(draws) == 0


# --- runs that export pipelines ------------------------------------------------------------------------


def test_flow_ddpm_run_exports_a_cfg_pipeline_that_samples(tmp_path):
    run = train(tiny(tmp_path, "model.objective=flow", *CONDITIONAL), progress=False)
    pipe = AtomClassConditionalPipeline.from_pretrained(run / "pipeline")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.transformer is None
    assert pipe.is_flow_matching and pipe.null_class_label == 10
    assert isinstance(pipe.separation, AtomSeparation) and pipe.config.separation_site == "mid_block"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1, 2], guidance_scale=2.0, num_inference_steps=3, output_type="pt").images
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()


@pytest.mark.parametrize("objective", ["flow", "epsilon"])
def test_dit_run_trains_atom_separation_at_the_middle_block_and_exports(tmp_path, objective):
    config = tiny(tmp_path, f"model.objective={objective}", *DIT, *CONDITIONAL)
    assert default_site(config.model) == "transformer_blocks.1"
    run = train(config, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all('"L_atom"' in line for line in lines)
    pipe = AtomClassConditionalPipeline.from_pretrained(run / "pipeline")
    assert isinstance(pipe.transformer, DiTTransformer2DModel) and pipe.unet is None
    assert pipe.num_classes == 10 and pipe.config.separation_site == "transformer_blocks.1"
    assert pipe.separation.config.dim == 16  # the DiT's token width, dit_heads · dit_head_dim
    expected = FlowMatchEulerDiscreteScheduler if objective == "flow" else DDIMScheduler
    assert isinstance(pipe.scheduler, expected)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 9], guidance_scale=3.0, num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_dit_label_dropout_is_the_loops_own(tmp_path):
    """DiT's blocks would each drop labels from the global RNG; the loop's seeded dropout replaces it."""
    dit = build_model(tiny(tmp_path, *DIT, *CONDITIONAL).model, (1, 8, 8)).train()
    embedding = dit.transformer_blocks[0].norm1.emb.class_embedder
    assert embedding.embedding_table.num_embeddings == 11  # ten classes and the null label
    labels = torch.arange(10).repeat(100)  # DiT's own dropout (p = 0.1) would drop some of these
    assert torch.equal(embedding(labels), embedding.embedding_table(labels))
    with pytest.raises(ValueError, match="dit_patch_size=2"):
        build_model(tiny(tmp_path, *DIT, *CONDITIONAL).model, (1, 9, 9))


def test_unconditional_flow_run_exports_a_ddpm_pipeline_that_samples_the_flow(tmp_path):
    run = train(tiny(tmp_path, "model.objective=flow", "train.steps=2"), progress=False)
    stock = DDPMPipeline.from_pretrained(run / "pipeline")
    assert isinstance(stock.scheduler, FlowMatchEulerDiscreteScheduler)
    stock.set_progress_bar_config(disable=True)
    atom = AtomDDPMPipeline.from_pretrained(run / "pipeline")
    atom.set_progress_bar_config(disable=True)
    options = dict(batch_size=2, num_inference_steps=3, output_type="np")
    a, b = stock(generator=seed(), **options).images, atom(generator=seed(), **options).images
    assert a.shape == (2, 8, 8, 1) and (a == b).all()
    with pytest.raises(ValueError, match=r"rectified flow.*AtomDDPMPipeline"):
        AtomDDIMPipeline.from_pretrained(run / "pipeline")


CHILD = textwrap.dedent(
    """
    import sys, torch
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
    from atomgen.pipelines import AtomClassConditionalPipeline

    for folder, denoiser in ((sys.argv[1], "transformer"), (sys.argv[2], "unet")):
        pipe = AtomClassConditionalPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
        assert getattr(pipe, denoiser) is not None and pipe.separation is not None
        images = pipe(class_labels=[0, 1], guidance_scale=2.0, num_inference_steps=2, output_type="pt").images
        assert images.shape == (2, 1, 8, 8), images.shape
    stock = DiffusionPipeline.from_pretrained(sys.argv[3])  # the generic loader: a stock DDPMPipeline
    assert isinstance(stock.scheduler, FlowMatchEulerDiscreteScheduler)
    stock(batch_size=2, num_inference_steps=2, output_type="np")
    print("loaded")
    """
)


@pytest.mark.slow
def test_exported_flow_pipelines_load_offline_in_a_fresh_process(tmp_path):
    runs = [
        train(tiny(tmp_path / "dit", "model.objective=flow", "train.steps=1", *DIT, *CONDITIONAL)),
        train(tiny(tmp_path / "unet", "model.objective=flow", "train.steps=1", *CONDITIONAL)),
        train(tiny(tmp_path / "plain", "model.objective=flow", "train.steps=1")),
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    folders = [str(Path(run) / "pipeline") for run in runs]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *folders], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().endswith("loaded")


# --- the pipeline on a flow model and a DiT --------------------------------------------------------------


@pytest.mark.parametrize("denoiser", ["transformer", "unet"])
def test_flow_cfg_matches_a_hand_written_euler_loop(denoiser):
    pipe, w = flow_pipe(denoiser), 3.0
    guided = final_latents(pipe, guidance_scale=w)

    model = pipe.denoiser
    latents, labels = torch.randn(4, 1, 8, 8, generator=seed()), torch.tensor(LABELS)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas  # 1 … 1/STEPS, then 0
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            assert t == sigmas[i] * 1000  # the denoiser sees σ · T
            null = torch.full_like(labels, 10)
            output = model(
                torch.cat([latents] * 2), t.expand(8), class_labels=torch.cat([null, labels])
            ).sample
            uncond, cond = output.chunk(2)
            latents = latents + (sigmas[i + 1] - sigmas[i]) * (uncond + w * (cond - uncond))
    torch.testing.assert_close(guided, latents, rtol=0, atol=1e-5)
    assert not torch.allclose(guided, final_latents(pipe, guidance_scale=1.0))


def test_dit_with_learned_variance_uses_the_prediction_channels():
    pipe = flow_pipe(out_channels=2)
    assert final_latents(pipe, guidance_scale=2.0).shape == (4, 1, 8, 8)


def test_apg_on_a_flow_model_converts_through_x0_and_back():
    pipe = flow_pipe()
    plain = final_latents(pipe, guidance_scale=3.0)
    same = AdaptiveProjectedGuidance(guidance_scale=3.0, eta=1.0, adaptive_projected_guidance_rescale=0.0)
    torch.testing.assert_close(final_latents(pipe, guider=same), plain, rtol=1e-4, atol=1e-4)


def test_atom_guidance_on_the_flow_dit_at_its_middle_block():
    pipe = flow_pipe()
    stock = final_latents(pipe, guidance_scale=2.0)
    guided = final_latents(pipe, guidance_scale=2.0, atom_scale=50.0, atom_active_range=(0.0, 1.0))
    assert torch.isfinite(guided).all() and not torch.allclose(guided, stock, atol=1e-4)
    assert torch.equal(final_latents(pipe, guidance_scale=2.0), stock)  # removed after the call


def test_pipeline_errors():
    scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="not neither"):
        AtomClassConditionalPipeline(None, scheduler)
    with pytest.raises(ValueError, match="not both"):
        AtomClassConditionalPipeline(tiny_unet(num_class_embeds=11), scheduler, transformer=tiny_dit())
    with pytest.raises(TypeError, match=r"DiTTransformer2DModel.*got UNet2DModel"):
        AtomClassConditionalPipeline(None, scheduler, transformer=tiny_unet())
    with pytest.raises(ValueError, match=r"eta=1\.0.*deterministic"):
        flow_pipe()(class_labels=LABELS, eta=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"\[0, 9\].*DiTTransformer2DModel.*got \[11\]"):
        flow_pipe()(class_labels=[11], num_inference_steps=2)


# --- config errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("model.family=vae", "model.objective=flow"),
            r"model\.objective='flow' does not apply to model\.family='vae'",
        ),
        (("model.family=dit",), r"model\.family='dit' needs model\.num_classes"),
        (
            ("model.objective=score",),
            r"model\.objective must be one of \['epsilon', 'v_prediction', 'flow'\]",
        ),
        (
            ("model.family=dit", "model.num_classes=10", "model.dit_heads=0"),
            r"model\.dit_heads must be a positive",
        ),
    ],
)
def test_bad_combinations_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(tmp_path, *overrides)


# --- a latent DiT: a DiTPipeline checkpoint (transformer + VAE) in the class-conditional pipeline ---------


def dit_checkpoint(folder: Path, *, shift_factor: float | None = None, latent_channels: int = 4) -> Path:
    """facebook/DiT-XL-2-256's layout in miniature: a ``DiTPipeline`` saved with its ``AutoencoderKL``
    (8×8 RGB images, 4×4×4 latents), the transformer named ``Transformer2DModel`` as the hub's
    ``model_index.json`` names it, and the ImageNet-style ``id2label`` it carries."""
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        sample_size=4,
        in_channels=4,
        out_channels=8,  # learned variance, as DiT-XL/2
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline's null label is 1000
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
    vae = tiny_vae(in_channels=3, out_channels=3, latent_channels=latent_channels, scaling_factor=0.5)
    vae.register_to_config(shift_factor=shift_factor)
    DiTPipeline(dit, vae, DDIMScheduler()).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"transformer": ["diffusers", "Transformer2DModel"], "id2label": ID2LABEL}
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(
        json.dumps(config | {"_class_name": "Transformer2DModel"})
    )
    return folder


ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark"}


def latent_dit(tmp_path: Path, **options) -> AtomClassConditionalPipeline:
    pipe = AtomClassConditionalPipeline.from_pretrained(dit_checkpoint(tmp_path / "dit", **options))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_dit_pipeline_checkpoint_loads_with_its_vae_and_samples_as_dit_pipeline(tmp_path):
    pipe = latent_dit(tmp_path)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.transformer, DiTTransformer2DModel)
    assert pipe.num_classes == 1000 and pipe.get_label_ids(["goldfish", "great white shark"]) == [1, 2]
    stock = DiTPipeline.from_pretrained(tmp_path / "dit")
    stock.set_progress_bar_config(disable=True)
    for w in (1.0, 4.0):
        options = dict(guidance_scale=w, num_inference_steps=3, output_type="pt")
        ours = pipe(class_labels=[1, 2, 0], generator=seed(), **options).images
        theirs = stock(class_labels=[1, 2, 0], generator=seed(), **options).images
        assert ours.shape == (3, 3, 8, 8) and torch.equal(ours, theirs)  # images, not 4×4×4 latents
    pipe.save_pretrained(tmp_path / "saved")  # the VAE and the class names travel with it
    again = AtomClassConditionalPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(again.vae, AutoencoderKL) and again.labels == pipe.labels
    with pytest.raises(ValueError, match=r"unknown class names \['zebra'\].*goldfish"):
        pipe.get_label_ids("zebra")
    half = AtomClassConditionalPipeline.from_pretrained(tmp_path / "dit", torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    pixels = half(class_labels=[1, 1], num_inference_steps=2, output_type="np").images
    assert pixels.dtype == "float32" and pixels.shape == (2, 8, 8, 3)  # NumPy has no bfloat16


def test_a_latent_dit_takes_guiders_and_every_method_and_decodes_with_scaling_and_shift(tmp_path):
    pipe = latent_dit(tmp_path, shift_factor=0.25)

    def sample(**options):
        options = dict(guidance_scale=4.0, output_type="pt") | options
        return pipe(class_labels=[1, 1, 2, 2], num_inference_steps=3, generator=seed(), **options).images

    latents = sample(output_type="latent")
    assert latents.shape == (4, 4, 4, 4)
    with torch.no_grad():  # images = vae.decode(latents / scaling_factor + shift_factor), in [0, 1]
        by_hand = (pipe.vae.decode(latents / 0.5 + 0.25).sample / 2 + 0.5).clamp(0, 1)
    stock = sample()
    assert torch.equal(stock, by_hand)
    assert torch.equal(sample(guidance_scale=None, guider=ClassifierFreeGuidance(guidance_scale=4.0)), stock)
    for install in (
        lambda: AtomGuidance(pipe, atom_scale=0.3, normalize=True),
        lambda: FeatureGuidance(pipe, feature_scale=0.3),
        lambda: ParticleGuidance(pipe, pg_scale=0.3, normalize=True),
        lambda: CADS(pipe, generator=seed(1)),
    ):
        with install():
            guided = sample()
        assert guided.shape == stock.shape and not torch.equal(guided, stock)
    assert torch.equal(sample(), stock)


def test_a_vae_that_cannot_decode_the_latents_is_refused(tmp_path):
    folder = dit_checkpoint(tmp_path / "dit", latent_channels=2)
    with pytest.raises(ValueError, match=r"latent_channels=2\) cannot decode.*in_channels=4.*vae=None"):
        AtomClassConditionalPipeline.from_pretrained(folder)
    latents_only = AtomClassConditionalPipeline.from_pretrained(folder, vae=None)
    assert latents_only.vae is None
    latents_only.set_progress_bar_config(disable=True)
    assert latents_only(class_labels=[1], num_inference_steps=2, output_type="pt").images.shape == (
        1,
        4,
        4,
        4,
    )
    with pytest.raises(ValueError, match="'latent' needs a VAE"):
        latents_only(class_labels=[1], num_inference_steps=2, output_type="latent")
    with pytest.raises(TypeError, match=r"decodes latents with a diffusers autoencoder.*got vae=UNet2DModel"):
        AtomClassConditionalPipeline(
            None, DDIMScheduler(), transformer=latents_only.transformer, vae=tiny_unet()
        )
