"""Benchmark sampling-time atom guidance: its cost per denoising step, and what it buys against Particle
Guidance.

    python bench/guidance.py                              # speed: guided vs plain steps (minutes on 2 cores)
    python bench/guidance.py --pipeline runs/X/pipeline   # + diversity per fidelity on a digits model

1. **Speed.** Per-step time of sampling with atom guidance on at every step (``active_range=(0, 1)``) against
   plain sampling, through the real pipelines: ``DDIMPipeline`` with the demo-sized ``UNet2DModel``
   (8×8, one channel, ``block_out_channels=(32, 64)``), ``AtomClassConditionalPipeline`` with the CFG
   benchmark's 16×16 class-conditional UNet (classifier-free guidance, a doubled batch) and
   ``StableDiffusionPipeline`` (CFG too) with a small UNet2DConditionModel of Stable Diffusion's shape,
   and the flow-matching transformer pipelines ``StableDiffusion3Pipeline`` (CFG) and ``FluxPipeline``
   with small transformers of their shapes.
   Latent-gradient atom guidance (target ratio ≤ 1.6) and feature-space atom guidance (``FeatureGuidance``,
   no backward pass to the latents; target ≤ 1.15) are timed, and Particle Guidance, which needs no pass
   through the denoiser.
2. **Diversity per fidelity** (needs ``atomgen.eval``). On a trained 8×8 digits pipeline (``atomgen train
   configs/digits-ddpm.yaml`` writes ``runs/digits-ddpm/pipeline``): samples at several strengths of atom
   guidance and of Particle Guidance; diversity = Vendi score, fidelity = precision (k = 5) against
   scikit-learn's digits, both on pixels; reported as the Vendi gained per unit of precision lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DConditionModel, UNet2DModel

from atomgen.pipelines import (
    AtomClassConditionalPipeline,
    AtomDDIMPipeline,
    AtomGuidance,
    FeatureGuidance,
    ParticleGuidance,
)
from atomgen.train.config import ExperimentConfig
from atomgen.train.models import build_model

logger = logging.getLogger("bench.guidance")


@dataclass
class SpeedRow:
    model: str
    batch: str
    plain_ms: float
    atom_ms: float
    feature_ms: float
    particle_ms: float
    atom_ratio: float
    feature_ratio: float
    particle_ratio: float


# --- 1. Speed -------------------------------------------------------------------------------------------


DENOISERS = ("demo", "cfg", "sd", "sd3", "flux")  # the rows of the speed table
DIGITS_CONFIG = Path(__file__).parent.parent / "configs" / "digits-ddpm.yaml"
CFG_CONFIG = Path(__file__).parent.parent / "configs" / "mnist5k-cfg.yaml"


def demo_unet() -> UNet2DModel:
    """The demo's DDPM UNet, built from configs/digits-ddpm.yaml's model section."""
    torch.manual_seed(0)
    model = ExperimentConfig.from_yaml(DIGITS_CONFIG).model
    return build_model(model, (1, 8, 8)).eval()


def small_sd_unet() -> UNet2DConditionModel:
    """Stable Diffusion 1.x's UNet shape (cross-attention in three of four levels, two layers per block,
    a cross-attention mid block), at a tenth of its width and on 32×32 latents."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=64,
        attention_head_dim=8,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def time_methods(
    pipe, run: Callable[[], object], steps: int, repeats: int, atom: float, particle: float
) -> tuple[float, ...]:
    """Per-step times (ms) of plain, atom-guided (latent gradient), feature-guided and particle-guided
    runs, then the three ratios to plain.

    The four are timed in turn within each round, after a warm-up round, so that a machine shared with
    other work loads them alike; times are medians over rounds, ratios medians of per-round ratios.
    """
    separations: dict[str, object] = {}  # each method's own (feature guidance pools to a smaller grid)

    def install(name: str):
        separation = separations.get(name)
        if name == "atom":
            return AtomGuidance(pipe, atom_scale=atom, active_range=(0.0, 1.0), separation=separation)
        if name == "feature":  # the strength does not change the cost
            return FeatureGuidance(pipe, feature_scale=0.2, active_range=(0.0, 1.0), separation=separation)
        if name == "particle":
            return ParticleGuidance(pipe, pg_scale=particle, active_range=(0.0, 1.0))
        return None

    times: dict[str, list[float]] = {"plain": [], "atom": [], "feature": [], "particle": []}
    for round_ in range(repeats + 1):
        for name, seconds in times.items():
            handle = install(name)
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if handle is not None:
                separations[name] = getattr(handle, "separation", None)  # built once, at the first call
                handle.remove()
            if round_ > 0:
                seconds.append(elapsed)
    per_step = {name: 1000.0 * statistics.median(seconds) / steps for name, seconds in times.items()}
    ratio = {
        name: statistics.median(a / b for a, b in zip(times[name], times["plain"], strict=True))
        for name in ("atom", "feature", "particle")
    }
    methods = ("atom", "feature", "particle")
    return per_step["plain"], *(per_step[m] for m in methods), *(ratio[m] for m in methods)


def bench_demo(batch: int, steps: int, repeats: int) -> SpeedRow:
    pipe = DDIMPipeline(demo_unet(), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="pt")

    times = time_methods(pipe, run, steps, repeats, atom=10.0, particle=1.0)
    return SpeedRow("demo UNet2DModel 8×8 (32, 64)", str(batch), *times)


def bench_class_conditional(batch: int, steps: int, repeats: int) -> SpeedRow:
    """The CFG benchmark's model (configs/mnist5k-cfg.yaml: 16×16, (32, 64), ten classes) under
    classifier-free guidance at w = 1.5: a doubled batch, as in bench/cfg.py."""
    torch.manual_seed(0)
    model = ExperimentConfig.from_yaml(CFG_CONFIG).model
    unet = build_model(model, (1, 16, 16)).eval()
    pipe = AtomClassConditionalPipeline(unet, DDIMScheduler(prediction_type=model.objective))
    pipe.set_progress_bar_config(disable=True)
    # two samples per class: the batch methods act within a class and refuse a class sampled once
    labels = (torch.arange(batch) // 2) % model.num_classes

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe(
            labels, guidance_scale=1.5, num_inference_steps=steps, generator=generator, output_type="pt"
        )

    times = time_methods(pipe, run, steps, repeats, atom=0.1, particle=0.1)
    return SpeedRow("class-conditional UNet2DModel 16×16 (32, 64), CFG", f"{batch} (×2)", *times)


def bench_stable_diffusion(batch: int, steps: int, repeats: int) -> SpeedRow:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    vae = AutoencoderKL(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=small_sd_unet(),
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    embeddings = torch.randn(2, 1, 77, 64, generator=torch.Generator().manual_seed(0))

    def run():
        return pipe(
            prompt_embeds=embeddings[0],
            negative_prompt_embeds=embeddings[1],
            num_images_per_prompt=batch,
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=256,
            width=256,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )

    times = time_methods(pipe, run, steps, repeats, atom=10.0, particle=1.0)
    return SpeedRow("SD-shaped UNet2DConditionModel 32×32 latents, CFG", f"{batch} (×2)", *times)


def bench_flow_transformer(kind: str, batch: int, steps: int, repeats: int) -> SpeedRow:
    """A flow-matching transformer pipeline at a tenth of the real model's width: Stable Diffusion 3's
    MMDiT (joint blocks, classifier-free guidance: a doubled batch) or Flux's (dual- then single-stream
    blocks, guidance-distilled: no doubled batch), 256 image tokens of width 128, prompt embeddings
    given directly (no text encoders)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    width, text = 256, 64  # prompt embedding width, text tokens
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(8,), norm_num_groups=4)  # never decodes
    generator = torch.Generator().manual_seed(0)
    prompt = {
        "prompt_embeds": torch.randn(batch, text, width, generator=generator),
        "pooled_prompt_embeds": torch.randn(batch, width, generator=generator),
    }
    options = dict(num_inference_steps=steps, height=32, width=32, output_type="latent")
    if kind == "sd3":  # 32×32 latents of 16 channels in 2×2 patches: 256 tokens
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=4,
            attention_head_dim=32,
            num_attention_heads=4,
            caption_projection_dim=128,
            joint_attention_dim=width,
            pooled_projection_dim=width,
        ).eval()
        pipe = StableDiffusion3Pipeline(
            transformer, FlowMatchEulerDiscreteScheduler(shift=3.0), vae, None, None, None, None, None, None
        )
        negative = {f"negative_{k}": torch.zeros_like(v) for k, v in prompt.items()}
        call, name = dict(**prompt, **negative, guidance_scale=5.0), "SD3-shaped MMDiT, CFG"
    else:  # 32×32 latents packed in 2×2 patches of 64 channels: 256 tokens
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=32,
            num_attention_heads=4,
            joint_attention_dim=width,
            pooled_projection_dim=width,
            axes_dims_rope=[8, 12, 12],
        ).eval()
        pipe = FluxPipeline(
            FlowMatchEulerDiscreteScheduler(shift=3.0), vae, None, None, None, None, transformer
        )
        call, name = dict(**prompt), "Flux-shaped transformer, guidance-distilled"
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(**call, **options, generator=torch.Generator().manual_seed(0))

    times = time_methods(pipe, run, steps, repeats, atom=0.5, particle=0.5)
    doubled = " (×2)" if kind == "sd3" else ""
    return SpeedRow(f"{name}, 256 tokens, flow matching", f"{batch}{doubled}", *times)


# --- 2. Diversity per fidelity on the digits model -------------------------------------------------


@dataclass
class EfficacyRow:
    method: str
    strength: float
    vendi: float
    precision: float
    recall: float

    def gain_per_loss(self, plain: EfficacyRow) -> float | None:
        """Vendi gained per unit of precision lost against plain sampling; ``None`` unless both moved
        that way (no gain, or no loss: the ratio would say nothing)."""
        gained, lost = self.vendi - plain.vendi, plain.precision - self.precision
        return gained / lost if gained > 0 and lost > 1e-9 else None


def bench_efficacy(
    pipeline_dir: Path,
    samples: int,
    batch: int,
    steps: int,
    atom_strengths: list[float],
    particle_strengths: list[float],
) -> list[EfficacyRow]:
    from sklearn.datasets import load_digits

    from atomgen.eval import prdc, vendi

    pipe = AtomDDIMPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    if pipe.unet.config.sample_size != 8 or pipe.unet.config.in_channels != 1:
        raise SystemExit(f"{pipeline_dir}: the efficacy part runs on an 8×8 one-channel digits model")
    real = torch.from_numpy(load_digits().images / 16.0).float().flatten(1).numpy()

    def measure(method: str, strength: float, install: Callable[[], object] | None) -> EfficacyRow:
        handle = install() if install is not None else None
        images = []
        for start in range(0, samples, batch):
            generator = torch.Generator().manual_seed(start)
            size = min(batch, samples - start)
            out = pipe(batch_size=size, num_inference_steps=steps, generator=generator, output_type="pt")
            images.append(out.images)
        if handle is not None:
            handle.remove()
        fake = torch.cat(images).flatten(1).numpy()
        quality = prdc(real, fake, k=5)
        row = EfficacyRow(method, strength, vendi(fake), quality.precision, quality.recall)
        logger.info("%s", row)
        return row

    rows = [measure("plain", 0.0, None)]
    rows += [measure("atom", s, lambda s=s: AtomGuidance(pipe, atom_scale=s)) for s in atom_strengths]
    rows += [
        measure("particle", s, lambda s=s: ParticleGuidance(pipe, pg_scale=s)) for s in particle_strengths
    ]
    return rows


def _has_eval_suite() -> bool:
    """Whether ``atomgen.eval`` offers the scores the efficacy part uses."""
    try:
        from atomgen.eval import prdc, vendi  # noqa: F401
    except ImportError:
        return False
    return True


# --- Report ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument(
        "--denoisers",
        nargs="+",
        choices=DENOISERS,
        default=list(DENOISERS),
        help="which rows of the speed table to time (default: all)",
    )
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per timed run (demo UNet)")
    parser.add_argument("--sd-steps", type=int, default=4, help="denoising steps per timed run (SD-shaped)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians over them)")
    parser.add_argument(
        "--demo-batch", type=int, nargs="+", default=[16, 64], help="batches of the demo UNet"
    )
    parser.add_argument(
        "--cfg-batch", type=int, default=64, help="images of the class-conditional UNet (doubled by CFG)"
    )
    parser.add_argument("--sd-batch", type=int, default=4, help="images per prompt of the SD-shaped UNet")
    parser.add_argument("--pipeline", type=Path, default=None, help="a trained 8×8 digits pipeline directory")
    parser.add_argument("--samples", type=int, default=512, help="samples per method (efficacy)")
    parser.add_argument("--batch", type=int, default=64, help="batch while sampling (efficacy)")
    parser.add_argument("--atom-strengths", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0])
    parser.add_argument("--particle-strengths", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    speed = []
    if "demo" in args.denoisers:
        speed += [bench_demo(batch, args.steps, args.repeats) for batch in args.demo_batch]
    if "cfg" in args.denoisers:
        speed.append(bench_class_conditional(args.cfg_batch, args.steps, args.repeats))
    if "sd" in args.denoisers:
        speed.append(bench_stable_diffusion(args.sd_batch, args.sd_steps, args.repeats))
    speed += [
        bench_flow_transformer(kind, args.sd_batch, args.sd_steps, args.repeats)
        for kind in ("sd3", "flux")
        if kind in args.denoisers
    ]
    device = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {device}"
    )
    print(
        f"per denoising step, every step guided ({args.steps} steps for the demo UNet, {args.sd_steps} for the "
        f"SD-shaped one), medians of {args.repeats} rounds\n"
    )
    print(
        "| denoiser | batch | plain (ms) | atom guidance (ms) | ratio (target ≤ 1.6) | feature guidance (ms) "
        "| ratio (target ≤ 1.15) | Particle G. (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in speed:
        print(
            f"| {r.model} | {r.batch} | {r.plain_ms:.1f} | {r.atom_ms:.1f} | {r.atom_ratio:.2f} | "
            f"{r.feature_ms:.1f} | {r.feature_ratio:.2f} | {r.particle_ms:.1f} | {r.particle_ratio:.2f} |"
        )
    results: dict[str, object] = {"speed": [asdict(r) for r in speed]}

    if not _has_eval_suite():
        print("\ndiversity per fidelity: skipped, needs atomgen.eval (vendi, prdc)")
    elif args.pipeline is None:
        print("\ndiversity per fidelity: skipped, needs --pipeline DIR (a trained 8×8 digits pipeline)")
    else:
        rows = bench_efficacy(
            args.pipeline, args.samples, args.batch, 50, args.atom_strengths, args.particle_strengths
        )
        plain = rows[0]
        print(f"\ndiversity per fidelity on {args.pipeline}, {args.samples} samples per row, 50 DDIM steps\n")
        print(
            "| method | strength | Vendi | Δ Vendi | precision | Δ precision | recall | Vendi gained per precision lost |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            gain = r.gain_per_loss(plain)
            shown = "—" if r is plain else ("n/a" if gain is None else f"{gain:.2f}")
            print(
                f"| {r.method} | {r.strength:g} | {r.vendi:.3f} | {r.vendi - plain.vendi:+.3f} | {r.precision:.3f} | "
                f"{r.precision - plain.precision:+.3f} | {r.recall:.3f} | {shown} |"
            )
        results["efficacy"] = [asdict(r) for r in rows]
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
