"""The Atom pipelines: stock equivalence, call options, the VAE pipeline, and save/load in a fresh process."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
)
from tiny import quiet, tiny_unet, tiny_vae

from atomgen import AtomSeparation
from atomgen.pipelines import AtomDDIMPipeline, AtomDDPMPipeline, AtomVAEPipeline


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


# --- AtomDDPMPipeline and AtomDDIMPipeline --------------------------------------------------------

STOCK_PAIRS = [
    (AtomDDPMPipeline, DDPMPipeline, DDPMScheduler, {"num_inference_steps": 8}),
    (AtomDDIMPipeline, DDIMPipeline, DDIMScheduler, {"num_inference_steps": 6, "eta": 1.0}),
]


@pytest.mark.parametrize(("atom", "stock", "scheduler", "options"), STOCK_PAIRS)
def test_atom_pipelines_sample_exactly_as_stock(atom, stock, scheduler, options):
    unet = tiny_unet()
    ours = quiet(atom(unet, scheduler(), separation=AtomSeparation(dim=16)))
    theirs = quiet(stock(unet, scheduler()))
    for output_type in ("pt", "np"):
        a = ours(batch_size=3, generator=seed(), output_type=output_type, **options).images
        b = theirs(batch_size=3, generator=seed(), output_type=output_type, **options).images
        assert type(a) is type(b) and (torch.equal(a, b) if output_type == "pt" else np.array_equal(a, b))
    pil = ours(batch_size=2, generator=seed(), **options).images
    assert [image.size for image in pil] == [(8, 8), (8, 8)]
    (images,) = ours(batch_size=2, generator=seed(), output_type="pt", return_dict=False, **options)
    assert images.shape == (2, 1, 8, 8)


def test_ddim_pipeline_converts_any_scheduler_to_ddim():
    pipe = AtomDDIMPipeline(tiny_unet(), DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_guidance_option_guides_for_the_call_only():
    unet = tiny_unet()
    pipe = quiet(AtomDDIMPipeline(unet, DDIMScheduler(clip_sample=False)))
    stock = pipe(batch_size=4, num_inference_steps=5, generator=seed(), output_type="pt").images
    guided = pipe(
        batch_size=4, num_inference_steps=5, generator=seed(), output_type="pt", atom_scale=300.0
    ).images
    assert not torch.allclose(guided, stock)
    assert not unet._forward_hooks and not unet._forward_pre_hooks and not unet.mid_block._forward_hooks
    with pytest.raises(ValueError, match="nothing to separate"):
        pipe(batch_size=1, num_inference_steps=5, atom_scale=1.0)
    assert not unet._forward_hooks and torch.is_grad_enabled()  # cleaned up after the error too
    again = pipe(batch_size=4, num_inference_steps=5, generator=seed(), output_type="pt").images
    assert torch.equal(again, stock)
    # the option's name before it was named after the method: the same guidance, with a FutureWarning
    with pytest.warns(FutureWarning, match=r"guidance_strength=…\) is deprecated.*use atom_scale="):
        old = pipe(
            batch_size=4, num_inference_steps=5, generator=seed(), output_type="pt", guidance_strength=300.0
        ).images
    assert torch.equal(old, guided)
    with pytest.raises(TypeError, match="both atom_scale= and its deprecated alias guidance_strength="):
        pipe(batch_size=4, num_inference_steps=5, atom_scale=1.0, guidance_strength=300.0)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['strenght'\]"):
        pipe(batch_size=4, num_inference_steps=5, strenght=1.0)


def test_class_conditional_unet_takes_class_labels():
    pipe = quiet(AtomDDIMPipeline(tiny_unet(num_class_embeds=3), DDIMScheduler()))
    one = pipe(batch_size=2, class_labels=1, num_inference_steps=3, generator=seed(), output_type="pt")
    each = pipe(batch_size=2, class_labels=[1, 1], num_inference_steps=3, generator=seed(), output_type="pt")
    other = pipe(batch_size=2, class_labels=[2, 0], num_inference_steps=3, generator=seed(), output_type="pt")
    assert torch.equal(one.images, each.images) and not torch.equal(one.images, other.images)
    with pytest.raises(ValueError, match="pass class_labels"):
        pipe(batch_size=2, num_inference_steps=3)
    with pytest.raises(ValueError, match="3 entries for batch_size=2"):
        pipe(batch_size=2, class_labels=[0, 1, 2], num_inference_steps=3)
    unconditional = quiet(AtomDDIMPipeline(tiny_unet(), DDIMScheduler()))
    with pytest.raises(ValueError, match="no class embedding"):
        unconditional(batch_size=2, class_labels=[0, 1], num_inference_steps=3)


def test_callback_on_step_end_sees_and_replaces_the_latents():
    pipe = quiet(AtomDDPMPipeline(tiny_unet(), DDPMScheduler()))
    seen = []

    def callback(pipeline, step_index, timestep, callback_kwargs):
        seen.append((step_index, int(timestep), tuple(callback_kwargs["latents"].shape)))
        if step_index == 3:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    images = pipe(batch_size=2, num_inference_steps=4, callback_on_step_end=callback, output_type="pt").images
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][2] == (2, 1, 8, 8)
    assert torch.equal(images, torch.full_like(images, 0.5))  # zero latents are mid-grey images


def test_invalid_call_arguments_are_named():
    pipe = quiet(AtomDDPMPipeline(tiny_unet(), DDPMScheduler()))
    with pytest.raises(ValueError, match="output_type"):
        pipe(batch_size=2, num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(batch_size=0, num_inference_steps=2)
    with pytest.raises(ValueError, match="list of generators of length 1"):
        pipe(batch_size=2, generator=[seed()], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 1, 8, 8\)"):
        pipe(batch_size=2, latents=torch.zeros(2, 1, 4, 4), num_inference_steps=2)
    with pytest.raises(ValueError, match="offers"):
        pipe(batch_size=2, num_inference_steps=2, callback_on_step_end_tensor_inputs=["noise"])
    with pytest.raises(TypeError, match="AtomSeparation"):
        AtomDDPMPipeline(tiny_unet(), DDPMScheduler(), separation=torch.nn.Linear(2, 2))


# --- The denoising loops' copies stay in sync --------------------------------------------------------

# As diffusers marks and checks its copies (utils/check_copies.py): a comment "# Copied from
# atomgen.pipelines.<module>.<Class>.<method>" in a function says that the rest of the function, from the
# next line, is the named method's body after its docstring, line for line. A comment line
# "# not copied: <reason>" exempts the line below it.
COPIED_FROM = re.compile(r"^\s*# Copied from atomgen\.pipelines\.(\w+)\.(\w+)\.(\w+)")
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def body_after_docstring(source: str, function: ast.FunctionDef) -> list[str]:
    first = function.body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return source.splitlines()[first.end_lineno if has_docstring else first.lineno - 1 : function.end_lineno]


def copy_differences(original: list[str], copy: list[str]) -> list[str]:
    """The lines where ``copy`` departs from ``original`` (lines under "# not copied" excepted)."""
    expected, exempt = [], set()
    for line in copy:
        if line.strip().startswith("# not copied"):
            exempt.add(len(expected))
        else:
            expected.append(line)
    if len(expected) != len(original):
        return [f"{len(expected)} lines against the original's {len(original)}"]
    return [
        f"copy: {c.strip()!r} / original: {o.strip()!r}"
        for i, (o, c) in enumerate(zip(original, expected, strict=True))
        if i not in exempt and o != c
    ]


def copies() -> list[tuple[str, list[str], list[str]]]:
    """``(name, original, copy)`` for every "# Copied from" comment under pipelines/."""
    found = []
    for path in sorted(PIPELINES.glob("*.py")):
        source = path.read_text()
        functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
        for number, line in enumerate(source.splitlines(), start=1):
            match = COPIED_FROM.match(line)
            if not match:
                continue
            function = min(
                (f for f in functions if f.lineno <= number <= f.end_lineno),
                key=lambda f: f.end_lineno - f.lineno,
            )
            copy = source.splitlines()[number : function.end_lineno]
            module, cls, method = match.groups()
            target_source = (PIPELINES / f"{module}.py").read_text()
            (original,) = [
                f
                for c in ast.parse(target_source).body
                if isinstance(c, ast.ClassDef) and c.name == cls
                for f in c.body
                if isinstance(f, ast.FunctionDef) and f.name == method
            ]
            found.append((f"{path.name}:{number}", body_after_docstring(target_source, original), copy))
    return found


def test_the_copied_loops_match_their_originals():
    found = copies()
    assert any(name.startswith("pipeline_atom_ddim.py") for name, _, _ in found)  # the DDIM loop is one
    for name, original, copy in found:
        assert not copy_differences(original, copy), (name, copy_differences(original, copy))
        # the check can fail: any other change to a line of the copy is caught
        changed = [line.replace("latents", "latent") for line in copy]
        assert copy_differences(original, changed)


# --- AtomVAEPipeline ----------------------------------------------------------------------------


def test_vae_pipeline_samples_the_prior_and_reconstructs():
    vae = tiny_vae(scaling_factor=0.5)
    pipe = AtomVAEPipeline(vae)
    assert pipe.latent_shape == (2, 4, 4)  # latent_channels, sample_size / 2^(blocks − 1)
    latents = pipe(batch_size=3, generator=seed(), output_type="latent").images
    z = torch.randn(3, 2, 4, 4, generator=seed())
    assert torch.equal(latents, z * 0.5)  # scaled latents of the prior sample z ~ N(0, I)
    images = pipe(latents=latents, output_type="pt").images
    with torch.no_grad():
        assert torch.allclose(images, (vae.decode(z).sample / 2 + 0.5).clamp(0, 1))
    reconstructed = pipe(images=images, output_type="pt").images
    with torch.no_grad():
        mean = vae.encode(images * 2 - 1).latent_dist.mode()
        assert torch.allclose(reconstructed, (vae.decode(mean).sample / 2 + 0.5).clamp(0, 1))
    sampled = pipe(images=images, sample_posterior=True, generator=seed(1), output_type="pt").images
    assert not torch.equal(sampled, reconstructed)
    pil = pipe(batch_size=2, generator=seed()).images
    assert [(image.mode, image.size) for image in pil] == [("L", (8, 8))] * 2
    assert pipe(images=pil, output_type="np").images.shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="not both"):
        pipe(images=images, latents=latents)


# --- save_pretrained / from_pretrained, loaded in a fresh process --------------------------------

CHILD = textwrap.dedent(
    """
    import sys, torch
    from diffusers import DDIMScheduler
    from atomgen import AtomSeparation
    from atomgen.pipelines import AtomDDIMPipeline, AtomDDPMPipeline, AtomVAEPipeline

    root = sys.argv[1]
    expected = torch.load(f"{root}/expected.pt")
    g = lambda: torch.Generator().manual_seed(0)

    ddpm = AtomDDPMPipeline.from_pretrained(f"{root}/ddpm")
    ddpm.set_progress_bar_config(disable=True)
    assert isinstance(ddpm.separation, AtomSeparation), type(ddpm.separation)
    assert ddpm.config.separation_site == "down_blocks.1"
    assert ddpm.separation.config.max_grid == 4
    for name, value in ddpm.separation.state_dict().items():
        assert torch.equal(value, expected["separation"][name]), name
    images = ddpm(batch_size=3, num_inference_steps=5, generator=g(), output_type="pt").images
    assert torch.equal(images, expected["ddpm"])

    ddim = AtomDDIMPipeline.from_pretrained(f"{root}/ddim")
    ddim.set_progress_bar_config(disable=True)
    assert ddim.separation is None and isinstance(ddim.scheduler, DDIMScheduler)
    images = ddim(batch_size=3, num_inference_steps=4, generator=g(), output_type="pt",
                  atom_scale=100.0).images
    assert torch.equal(images, expected["ddim_guided"])

    trained = AtomDDIMPipeline.from_pretrained(f"{root}/stock_layout")  # what `atomgen train` writes
    assert isinstance(trained.separation, AtomSeparation)

    vae = AtomVAEPipeline.from_pretrained(f"{root}/vae")
    assert isinstance(vae.separation, AtomSeparation)
    assert torch.equal(vae(batch_size=2, generator=g(), output_type="pt").images, expected["vae"])
    bare = AtomVAEPipeline.from_pretrained(f"{root}/bare_vae")  # what `atomgen train` writes
    assert isinstance(bare.separation, AtomSeparation)
    assert torch.equal(bare(batch_size=2, generator=g(), output_type="pt").images, expected["vae"])
    print("loaded")
    """
)


@pytest.mark.slow
def test_save_and_load_round_trip_in_a_fresh_process(tmp_path):
    unet = tiny_unet()
    separation = AtomSeparation(dim=16, max_grid=4)
    torch.nn.init.normal_(separation.role_head.weight)  # not the initial weights: a real round trip
    ddpm = quiet(
        AtomDDPMPipeline(unet, DDPMScheduler(), separation=separation, separation_site="down_blocks.1")
    )
    ddpm.save_pretrained(tmp_path / "ddpm")
    ddim = quiet(AtomDDIMPipeline(unet, DDIMScheduler(clip_sample=False)))
    ddim.save_pretrained(tmp_path / "ddim")
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(tmp_path / "stock_layout")
    separation.save_pretrained(tmp_path / "stock_layout" / "separation")
    vae = AtomVAEPipeline(tiny_vae(), separation=AtomSeparation(dim=2))
    vae.save_pretrained(tmp_path / "vae")
    vae.vae.save_pretrained(tmp_path / "bare_vae")
    vae.separation.save_pretrained(tmp_path / "bare_vae" / "separation")
    expected = {
        "separation": separation.state_dict(),
        "ddpm": ddpm(batch_size=3, num_inference_steps=5, generator=seed(), output_type="pt").images,
        "ddim_guided": ddim(
            batch_size=3, num_inference_steps=4, generator=seed(), output_type="pt", atom_scale=100.0
        ).images,
        "vae": vae(batch_size=2, generator=seed(), output_type="pt").images,
    }
    torch.save(expected, tmp_path / "expected.pt")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().endswith("loaded")
