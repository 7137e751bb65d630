"""CADS, condition-annealed sampling (Sadat et al., ICLR 2024), a sampling-time peer (method.md §8).

Early in sampling the conditioning ``y`` is drowned in noise and restored as sampling proceeds:

    ŷ = √γ(t) · y + s · √(1 − γ(t)) · n,        n ~ N(0, I)

with ``γ(t)`` piecewise linear on ``τ = t / (T − 1)`` (``σ`` under flow matching; 1 = pure noise): 1 below ``τ1``, 0 above ``τ2``.
Optionally ``ŷ`` is rescaled to ``y``'s mean and standard deviation and mixed back, ``ψ ŷ_rescaled +
(1 − ψ) ŷ``. It is installed on the denoiser with the same hook as the guidance methods.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.models.embeddings import LabelEmbedding
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .denoiser_hook import DenoiserCall, DenoiserHook

logger = logging.getLogger(__name__)


class CADS(DenoiserHook):
    r"""Condition-annealed sampling, installed on a pipeline's conditional denoiser.

    It anneals whatever conditioning the denoiser call carries: the prompt embeddings
    (``encoder_hidden_states``, SDXL's pooled ``text_embeds``, Stable Diffusion 3's and Flux's
    ``pooled_projections``), and the class embedding of a class-conditional ``UNet2DModel`` or
    ``UNet2DConditionModel`` (the output of its ``class_embedding`` module for the call's
    ``class_labels``) or ``DiTTransformer2DModel`` (its label embedders). Under classifier-free guidance only
    the conditional half is annealed; the unconditional embedding carries no condition. Mean and standard
    deviation for the rescaling are taken per sample.

    Args:
        pipe: a diffusers pipeline whose ``unet`` (or ``transformer``) is called with a conditioning.
        tau1, tau2: ``0 ≤ τ1 < τ2 ≤ 1``; the conditioning is intact for ``τ ≤ τ1`` and pure noise for
            ``τ ≥ τ2``.
        noise_scale: ``s``, the scale of the noise mixed into the conditioning. With ``s = 0``, rescaling
            and ``ψ = 1`` the rescaled ``√γ · y`` is ``y`` itself for every ``γ > 0``, and CADS is the
            identity, ``γ(t) → 0`` included: it leaves the pipeline bit-identical to the stock one.
        psi: ``ψ``, how much of the rescaled conditioning to use (1: all of it).
        rescale: whether to rescale ``ŷ`` to the mean and standard deviation of ``y``.
        generator: a ``torch.Generator`` for the noise ``n``, for reproducible runs.

    Example:
        >>> import torch
        >>> from diffusers import DDPMScheduler, UNet2DModel
        >>> from atomgen.pipelines import CADS, AtomDDPMPipeline
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, num_class_embeds=10, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomDDPMPipeline(unet, DDPMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> with CADS(pipe, generator=torch.Generator().manual_seed(0)):
        ...     images = pipe(batch_size=2, class_labels=[3, 3], num_inference_steps=5, output_type="pt")
        >>> images.images.shape
        torch.Size([2, 1, 8, 8])
    """

    needs_batch = False  # CADS acts on each sample's conditioning on its own

    def __init__(
        self,
        pipe: DiffusionPipeline,
        tau1: float = 0.6,
        tau2: float = 0.9,
        noise_scale: float = 0.25,
        psi: float = 1.0,
        rescale: bool = True,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 <= tau1 < tau2 <= 1.0:
            raise ValueError(f"CADS needs 0 ≤ tau1 < tau2 ≤ 1, got tau1={tau1}, tau2={tau2}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be ≥ 0, got {noise_scale}")
        if not 0.0 <= psi <= 1.0:
            raise ValueError(f"psi must lie in [0, 1], got {psi}")
        self.tau1, self.tau2, self.noise_scale, self.psi = (
            float(tau1),
            float(tau2),
            float(noise_scale),
            float(psi),
        )
        self.rescale, self.generator = rescale, generator
        self._gamma: torch.Tensor | None = None
        self._class_noise: torch.Tensor | None = None
        super().__init__(pipe)

    def setup(self) -> None:
        reason = conditioning_refusal(self.pipe, self.denoiser)
        if reason:
            raise ValueError(f"CADS anneals a conditioning, but {reason}")
        # The class embedding is computed inside the forward pass: a UNet's ``class_embedding``, or the
        # label embedders of a DiT's adaptive norms (one per block; they share one noise draw per call).
        embedding = getattr(self.denoiser, "class_embedding", None)
        embedders = [embedding] if isinstance(embedding, nn.Module) else []
        embedders += [m for m in self.denoiser.modules() if isinstance(m, LabelEmbedding)]
        self._has_class_embedding = bool(embedders)
        for embedder in embedders:
            self._handles.append(embedder.register_forward_hook(self._anneal_class_embedding))

    def is_enabled(self) -> bool:
        # s = 0 with full rescaling restores y exactly (the limit γ → 0 included): nothing to do
        return not (self.noise_scale == 0.0 and self.rescale and self.psi == 1.0)

    def where(self) -> str:
        return f"for τ above tau1={self.tau1}"

    def schedule(self, fraction: torch.Tensor) -> torch.Tensor:
        """``γ(τ)``: 1 for ``τ ≤ τ1``, linear down to 0 at ``τ2``, 0 beyond."""
        return ((self.tau2 - fraction) / (self.tau2 - self.tau1)).clamp(0.0, 1.0)

    def before_forward(self, call: DenoiserCall) -> bool:
        gamma = self.schedule(call.fraction)[call.guided]
        if bool((gamma >= 1.0).all()):
            return False
        has_class_embedding = self._has_class_embedding and call.get("class_labels") is not None
        prompt = call.get("encoder_hidden_states")
        if prompt is None and not has_class_embedding:
            raise ValueError(
                f"CADS anneals a conditioning, but this {type(self.denoiser).__name__} call has none: "
                "pass prompt embeddings (encoder_hidden_states) or class_labels to a model with a "
                "class embedding"
            )
        self._gamma, self._class_noise = gamma, None
        if prompt is not None:
            call.replace("encoder_hidden_states", self._anneal(prompt, call))
        pooled = call.get("pooled_projections")  # Stable Diffusion 3's and Flux's pooled text embedding
        if isinstance(pooled, torch.Tensor):
            call.replace("pooled_projections", self._anneal(pooled, call))
        added = call.get("added_cond_kwargs")
        if isinstance(added, dict) and isinstance(added.get("text_embeds"), torch.Tensor):  # SDXL pooled
            call.replace(
                "added_cond_kwargs", {**added, "text_embeds": self._anneal(added["text_embeds"], call)}
            )
        return True

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        self._gamma, self._class_noise = None, None
        return None

    def _anneal_class_embedding(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> Any:
        if self._call is None or self._gamma is None:
            return None
        if self._class_noise is None or self._class_noise.shape != output[self._call.guided].shape:
            self._class_noise = self._noise(output[self._call.guided])
        return self._anneal(output, self._call, self._class_noise)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return randn_tensor(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def _anneal(
        self, condition: torch.Tensor, call: DenoiserCall, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``ŷ`` for the guided rows of ``condition``; the other rows are returned unchanged."""
        y = condition[call.guided]
        if y.shape[0] != self._gamma.shape[0]:
            raise ValueError(
                f"the conditioning has {condition.shape[0]} rows for {call.sample.shape[0]} latents"
            )
        gamma = call.per_row(self._gamma, y)
        noise = self._noise(y) if noise is None else noise
        noisy = gamma.sqrt() * y + self.noise_scale * (1.0 - gamma).sqrt() * noise
        if self.rescale:
            dims = tuple(range(1, y.ndim))
            mean, std = y.mean(dims, keepdim=True), y.std(dims, keepdim=True)
            noisy_mean, noisy_std = noisy.mean(dims, keepdim=True), noisy.std(dims, keepdim=True)
            rescaled = (noisy - noisy_mean) / noisy_std.clamp_min(1e-12) * std + mean
            # a constant ŷ (s = 0 at γ = 0) has no spread to rescale: y is the limit of γ → 0
            rescaled = torch.where(noisy_std > 0, rescaled, y)
            noisy = self.psi * rescaled + (1.0 - self.psi) * noisy
        annealed = torch.where(gamma < 1.0, noisy, y)  # rows still at γ = 1 stay bit-identical
        return call.with_guided(condition, annealed)

    def __repr__(self) -> str:
        return (
            f"CADS(tau1={self.tau1}, tau2={self.tau2}, noise_scale={self.noise_scale}, psi={self.psi}, "
            f"rescale={self.rescale})"
        )


def conditioning_refusal(pipe: Any, denoiser: nn.Module) -> str | None:
    """Why ``denoiser`` takes no conditioning CADS can anneal, or ``None`` when it takes one: prompt
    embeddings (``encoder_hidden_states``) or class labels through a class embedding."""
    takes_prompt = "encoder_hidden_states" in inspect.signature(type(denoiser).forward).parameters
    embedding = getattr(denoiser, "class_embedding", None)
    takes_label = isinstance(embedding, nn.Module) or any(
        isinstance(m, LabelEmbedding) for m in denoiser.modules()
    )
    if takes_prompt or takes_label:
        return None
    return (
        f"the {type(pipe).__name__}'s {type(denoiser).__name__} takes neither prompt embeddings nor class "
        "labels (an unconditional model); use a text- or class-conditional pipeline"
    )


__all__ = ["CADS", "conditioning_refusal"]
