"""The method registry: parsing, refusing before sampling, installing and removing combinations."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from tiny import quiet, tiny_unet
from tiny_sd import seed

from atomgen.pipelines import AtomClassConditionalPipeline
from atomgen.pipelines.methods import METHODS, MethodSpec, install_methods, parse_method


def class_pipe() -> AtomClassConditionalPipeline:
    return quiet(
        AtomClassConditionalPipeline(tiny_unet(num_class_embeds=4), DDIMScheduler(clip_sample=False))
    )


def run(pipe) -> torch.Tensor:
    return pipe(
        class_labels=[1, 1, 2, 2],
        guidance_scale=2.0,
        num_inference_steps=4,
        generator=seed(),
        output_type="pt",
    ).images


def test_names_and_grammar():
    assert sorted(METHODS) == [
        "apg",
        "atom",
        "atom-feature",
        "atom-sparse",
        "autoguidance",
        "cads",
        "interval",
        "pg",
    ]
    assert parse_method("atom:0.2") == MethodSpec("atom", 0.2, {})
    assert parse_method("interval") == MethodSpec("interval", None, {})
    spec = parse_method("pg:1,active_range=[0.2, 0.9],normalize=false")
    assert spec == MethodSpec("pg", 1.0, {"active_range": [0.2, 0.9], "normalize": False})
    assert parse_method("autoguidance:2.0,guide=runs/a/step-500/pipeline").options == {
        "guide": "runs/a/step-500/pipeline"
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("atm:0.2", r"unknown method 'atm'.*known: apg, atom"),
        ("atom", r"needs a scale \(atom_scale\)"),
        ("atom:lots", "must be a finite number, got 'lots'"),
        ("atom:0.2,radius=3", r"no option 'radius' \(options: active_range, site"),
        ("atom:0.2,normalize", "options are KEY=VALUE"),
        ("", "NAME"),
    ],
)
def test_parse_errors_are_clear(text, message):
    with pytest.raises(ValueError, match=message):
        parse_method(text)


@pytest.mark.parametrize("name", ["cads", "interval", "apg", "autoguidance"])
def test_a_method_the_pipeline_cannot_take_is_refused_before_sampling(name):
    pipe = DDIMPipeline(tiny_unet(), DDIMScheduler())
    spec = MethodSpec(name, None, {"guide": tiny_unet()} if name == "autoguidance" else {})
    with pytest.raises(ValueError, match=f"method '{name}' cannot be installed on DDIMPipeline"):
        install_methods(pipe, ["atom:0.1", spec])
    assert not any(m._forward_pre_hooks for m in pipe.unet.modules())  # nothing left installed


@pytest.mark.parametrize("name", ["atom", "atom-feature", "atom-sparse", "pg", "cads", "interval"])
def test_scale_zero_is_the_stock_pipeline(name):
    pipe = class_pipe()
    stock = run(pipe)
    handles = install_methods(pipe, [f"{name}:0"])
    assert torch.equal(run(pipe), stock)
    for handle in handles:
        handle.remove()


def test_combinations_install_and_remove_cleanly():
    pipe = class_pipe()
    stock = run(pipe)
    weak = tiny_unet(num_class_embeds=4, block_out_channels=(4, 8))
    specs = [
        "atom:0.2",
        "atom-sparse:0.2,radius=2",
        "interval:0.3",
        "apg:0.5",
        "pg:0.2",
        "cads:0.1",
        "atom-feature:0.1",
    ]
    handles = install_methods(pipe, [*specs, MethodSpec("autoguidance", None, {"guide": weak})])
    guided = run(pipe)
    assert torch.isfinite(guided).all() and not torch.equal(guided, stock)
    assert all(handle.guided_calls > 0 for handle in handles)
    for handle in handles[::2] + handles[1::2]:  # any order
        handle.remove()
    assert torch.equal(run(pipe), stock)
    with pytest.raises(ValueError, match="method 'autoguidance' needs the option guide"):
        install_methods(pipe, ["autoguidance:2.0"])
    with pytest.raises(ValueError, match="given twice"):
        install_methods(pipe, ["atom:0.2", "atom:0.3"])


@pytest.mark.parametrize(
    "module",
    [
        "atom_guidance",
        "feature_guidance",
        "particle_guidance",
        "cads",
        "guidance_interval",
        "apg",
        "autoguidance",
        "methods",
        "sparse_guidance",
        "pipeline_atom_ddpm",
        "pipeline_atom_ddim",
        "pipeline_atom_vae",
    ],
)
def test_docstring_examples(module):
    module = importlib.import_module(f"atomgen.pipelines.{module}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
