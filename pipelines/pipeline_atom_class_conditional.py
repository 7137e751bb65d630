"""``AtomClassConditionalPipeline``: class-conditional sampling (a UNet or a DiT, in pixels or in a VAE's
latents; DDIM or rectified flow) with classifier-free guidance."""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any, ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTTransformer2DModel,
    SchedulerMixin,
    UNet2DModel,
)
from diffusers.guiders import AdaptiveProjectedGuidance, AdaptiveProjectedMixGuidance, BaseGuidance
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from torch import nn

from atomgen.separation import AtomSeparation

from .noise import DEFAULT_ACTIVE_RANGE, from_x0, is_flow_matching, noise_levels, prediction_type, to_x0
from .pipeline_utils import AtomUNetPipeline, StepEndCallback

logger = logging.getLogger(__name__)

DEFAULT_GUIDANCE_SCALE = 4.0  # diffusers' DiTPipeline's

# The guiders that combine exactly one conditional and one unconditional prediction, which this
# pipeline computes in one batched call. Guiders that change the denoiser per batch (PAG, SLG, SEG,
# AutoGuidance) need a call per batch and are refused.
GUIDER_PREDICTIONS = ["pred_cond", "pred_uncond"]
# APG projects the guidance update against the conditional *denoised* prediction x̂_0; its authors apply
# it there (diffusers PR #10173), so the pipeline hands these guiders x̂_0 and converts back.
X0_GUIDERS = (AdaptiveProjectedGuidance, AdaptiveProjectedMixGuidance)


class AtomClassConditionalPipeline(AtomUNetPipeline):
    r"""Class-conditional sampling of a ``UNet2DModel`` or a ``DiTTransformer2DModel`` with
    classifier-free guidance (CFG), by DDIM or, for a rectified-flow model, by flow-matching Euler steps.

    The denoiser is the ``unet`` or the ``transformer`` (one of the two; the other is ``None``). The UNet's
    class embedding has ``num_class_embeds = num_classes + 1`` entries; the last one,
    ``num_class_embeds − 1``, is the null label the model was trained with (label dropout) and gives the
    unconditional prediction. A DiT's label embedding has ``num_embeds_ada_norm + 1`` rows, the last
    the null label (as in diffusers' ``DiTPipeline``). With ``w = guidance_scale > 1`` each step makes
    one batched denoiser call on ``[z_t, z_t]`` with labels ``[null, y]`` and combines

        ε̂ = ε̂_u + w (ε̂_c − ε̂_u)

    (as diffusers' ``DiTPipeline``; the same linear rule in the model's parameterisation for v-, sample-
    or flow-prediction); with ``w ≤ 1`` only the conditional batch is computed. A diffusers guider
    (``guider=``) can replace that rule. The sampling-time methods (atom guidance, feature guidance,
    Particle Guidance, CADS…) install on it as on any pipeline; they see the doubled batch through
    :attr:`do_classifier_free_guidance` and guide its conditional half.

    Parameters:
        unet ([`UNet2DModel`] or `None`): the class-conditional UNet (built with ``num_class_embeds``);
            ``None`` when ``transformer`` is given.
        scheduler ([`DDIMScheduler`] or [`FlowMatchEulerDiscreteScheduler`]): the scheduler of the
            model's training. A flow-matching scheduler such as [`FlowMatchEulerDiscreteScheduler`] (a
            rectified-flow model, which predicts the velocity ``v = ε − x_0``) is kept, and steps
            ``x ← x + (σ_next − σ) v``; any other diffusers scheduler config is converted to
            [`DDIMScheduler`], as ``DDIMPipeline`` does.
        separation ([`AtomSeparation`], *optional*): the separation module trained with the denoiser.
        separation_site (`str`, *optional*): the denoiser module it was attached to; defaults to the
            UNet's ``"mid_block"``, or the middle ``transformer_blocks`` entry of the transformer.
        transformer ([`DiTTransformer2DModel`], *optional*): a class-conditional DiT, instead of the UNet.
        vae ([`AutoencoderKL`], *optional*): for a latent model (DiT-XL/2, say), the autoencoder whose
            scaled latents the denoiser samples (``latent_channels`` must be its ``in_channels``); the
            images are ``vae.decode(latents / scaling_factor + shift_factor)``, as diffusers'
            ``DiTPipeline`` decodes them (its VAEs have no shift). Without one the samples are the images.
        id2label (`dict[int, str]`, *optional*): class names, as a ``DiTPipeline`` checkpoint carries them
            (the ImageNet names of DiT-XL/2); :meth:`get_label_ids` reads them.

    Loading: ``AtomClassConditionalPipeline.from_pretrained(folder)`` reads the folders it saves, the
    ``pipeline/`` of ``atomgen train``, and a ``DiTPipeline`` checkpoint (transformer, VAE, scheduler and
    ``id2label``, e.g. a local copy of ``facebook/DiT-XL-2-256``). :func:`~atomgen.pipelines.load_pipeline`
    loads any of them by the class its ``model_index.json`` names. ``DiffusionPipeline.from_pretrained``
    cannot load this class: diffusers looks pipeline classes up among its own (or runs remote code).

    Example:
        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from atomgen.pipelines import AtomClassConditionalPipeline
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...     norm_num_groups=4, num_class_embeds=11, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> pipe = AtomClassConditionalPipeline(unet, DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe.num_classes, pipe.null_class_label
        (10, 10)
        >>> images = pipe(class_labels=[0, 1, 2, 3], guidance_scale=2.0, num_inference_steps=5,
        ...     generator=torch.Generator().manual_seed(0), output_type="pt").images
        >>> images.shape
        torch.Size([4, 1, 8, 8])

        A DiT trained as a rectified flow (its timesteps are ``σ · 1000``):

        >>> from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
        >>> dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
        ...     out_channels=1, num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
        >>> pipe = AtomClassConditionalPipeline(None, FlowMatchEulerDiscreteScheduler(), transformer=dit)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe.null_class_label, pipe.config.separation_site
        (10, 'transformer_blocks.1')
        >>> pipe(class_labels=[0, 1], guidance_scale=2.0, num_inference_steps=3, output_type="pt").images.shape
        torch.Size([2, 1, 8, 8])

        A latent DiT: 4 × 4 latents of 4 channels, decoded by a VAE into 8 × 8 RGB images:

        >>> from diffusers import AutoencoderKL
        >>> latent_dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        ...     out_channels=8, num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
        >>> vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8),
        ...     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ...     norm_num_groups=4, sample_size=8)
        >>> pipe = AtomClassConditionalPipeline(None, DDIMScheduler(), transformer=latent_dit, vae=vae)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe(class_labels=[0, 1], num_inference_steps=3, output_type="pt").images.shape
        torch.Size([2, 3, 8, 8])
    """

    model_cpu_offload_seq = "transformer->unet->vae"
    # the denoiser is one of unet and transformer; from_pretrained hands the other one None
    _optional_components: ClassVar[list[str]] = ["separation", "unet", "transformer", "vae"]
    _call_hints: ClassVar[dict[str, str]] = {
        "batch_size": "it samples one image per class label, so the number of images is "
        "len(class_labels): pass class_labels=[...], e.g. [i % pipe.num_classes for i in range(n)]"
    }

    def __init__(
        self,
        unet: UNet2DModel | None,
        scheduler: SchedulerMixin,
        separation: AtomSeparation | None = None,
        separation_site: str | None = None,
        transformer: DiTTransformer2DModel | None = None,
        vae: AutoencoderKL | None = None,
        id2label: dict[int, str] | dict[str, str] | None = None,
    ):
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError(
                f"{type(self).__name__} samples one denoiser: pass a class-conditional unet "
                f"(UNet2DModel) or a transformer (DiTTransformer2DModel), not "
                f"{'both' if unet is not None else 'neither'}"
            )
        if transformer is not None:
            self._check_transformer(transformer)
            site = separation_site or f"transformer_blocks.{len(transformer.transformer_blocks) // 2}"
        else:
            self._check_unet(unet)
            site = separation_site or "mid_block"
        # a flow-matching scheduler is kept; any other is converted to DDIM, as DDIMPipeline does
        if not is_flow_matching(scheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self._check_vae(vae, transformer if unet is None else unet)
        self._register(unet, scheduler, separation, site)
        self.register_modules(transformer=transformer, vae=vae)
        # JSON keys are strings: stored so, whichever the caller gave
        self.register_to_config(
            id2label=None if id2label is None else {str(k): v for k, v in id2label.items()}
        )
        self._do_classifier_free_guidance = False

    @classmethod
    def _check_transformer(cls, transformer: Any) -> None:
        if not isinstance(transformer, DiTTransformer2DModel):
            raise TypeError(
                f"{cls.__name__} takes a class-conditional DiTTransformer2DModel as its transformer (labels "
                f"through its ada-norm embedding); got {type(transformer).__name__}"
            )

    @classmethod
    def _check_unet(cls, unet: Any) -> None:
        num_class_embeds = getattr(unet.config, "num_class_embeds", None)
        if not isinstance(getattr(unet, "class_embedding", None), nn.Embedding) or num_class_embeds is None:
            raise ValueError(
                f"{cls.__name__} needs a class-conditional UNet2DModel with a label embedding "
                f"(num_class_embeds = num_classes + 1, the last index the null label); got "
                f"{type(unet).__name__} with num_class_embeds={num_class_embeds} and class_embed_type="
                f"{getattr(unet.config, 'class_embed_type', None)!r}. Build the UNet with "
                "num_class_embeds=num_classes + 1, or sample an unconditional UNet with AtomDDIMPipeline."
            )
        if num_class_embeds < 2:
            raise ValueError(
                f"num_class_embeds={num_class_embeds} leaves no class besides the null label; it must be "
                "num_classes + 1 ≥ 2"
            )

    @classmethod
    def _check_vae(cls, vae: Any, denoiser: nn.Module) -> None:
        if vae is None:
            return
        config = getattr(vae, "config", None)
        channels = getattr(config, "latent_channels", None)
        if (
            not callable(getattr(vae, "decode", None))
            or channels is None
            or config.get("scaling_factor") is None
        ):
            raise TypeError(
                f"{cls.__name__} decodes latents with a diffusers autoencoder whose config has latent_channels "
                f"and scaling_factor (AutoencoderKL, as DiT-XL/2's); got vae={type(vae).__name__}"
            )
        if channels != denoiser.config.in_channels:
            raise ValueError(
                f"this vae ({type(vae).__name__}, latent_channels={channels}) cannot decode what the "
                f"{type(denoiser).__name__} samples (in_channels={denoiser.config.in_channels}): it belongs "
                "to another model. Load without it, from_pretrained(folder, vae=None), to sample latents "
                "(output_type='latent'), or pass the model's own: from_pretrained(folder, vae=...)."
            )

    # --- what the hooks and the caller read -------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """The number of classes: the UNet's ``num_class_embeds − 1``, the DiT's ``num_embeds_ada_norm``."""
        if self.transformer is not None:
            return self.transformer.config.num_embeds_ada_norm
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class_label(self) -> int:
        """The label of the unconditional half: the last class embedding, ``num_classes``."""
        return self.num_classes

    @property
    def labels(self) -> dict[str, int]:
        """Class names → labels, from ``id2label`` (each comma-separated name of a class), as diffusers'
        ``DiTPipeline`` reads them; empty without ``id2label``."""
        names = {}
        for key, value in (self.config.get("id2label") or {}).items():
            for name in value.split(","):
                names[name.strip()] = int(key)
        return dict(sorted(names.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """The class labels of class names (:attr:`labels`), to pass as ``class_labels``."""
        names, labels = [label] if isinstance(label, str) else list(label), self.labels
        unknown = [name for name in names if name not in labels]
        if unknown:
            known = ", ".join(list(labels)[:10]) + (", …" if len(labels) > 10 else "")
            known = f"{len(labels)} names: {known}" if labels else "no names (it has no id2label)"
            raise ValueError(
                f"unknown class names {unknown}; this pipeline knows {known}. Pass class_labels as integers "
                "instead"
            )
        return [labels[name] for name in names]

    @property
    def is_flow_matching(self) -> bool:
        """Whether the model is a rectified flow (a flow-matching scheduler such as
        ``FlowMatchEulerDiscreteScheduler``; the model predicts the velocity ``v = ε − x_0`` on
        ``x_σ = (1 − σ) x_0 + σ ε``, at timesteps ``σ · T``)."""
        return is_flow_matching(self.scheduler)

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the UNet call of the current step is the doubled ``[uncond, cond]`` batch (the
        sampling-time hooks read it); ``False`` outside a call."""
        return self._do_classifier_free_guidance

    # --- steps of __call__ ------------------------------------------------------------------------

    def check_class_labels(self, class_labels: torch.Tensor | list[int] | int | None) -> torch.Tensor:
        """``class_labels`` as a ``(batch_size,)`` long tensor on the execution device, validated."""
        if class_labels is None:
            raise ValueError(
                f"{type(self).__name__} samples one image per class label: pass class_labels, e.g. "
                f"class_labels=[0, 1, 2, 3] (labels 0…{self.num_classes - 1})"
            )
        labels = torch.as_tensor(class_labels)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: pass one label per image to sample")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.ndim > 1:
            raise ValueError(
                f"class_labels must be integers, one per image (a list or a 1-d tensor); got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        labels = labels.flatten().long()
        bad = labels[(labels < 0) | (labels > self.null_class_label)]
        if bad.numel():
            raise ValueError(
                f"class_labels must lie in [0, {self.num_classes - 1}] (this {type(self.denoiser).__name__} "
                f"has {self.num_classes} classes, and the null label {self.null_class_label}, which samples "
                f"unconditionally); got {sorted(set(bad.tolist()))}"
            )
        return labels.to(self._execution_device)

    @staticmethod
    def check_guider(guider: BaseGuidance | None, guidance_scale: float | None) -> float | None:
        """Validate ``guider`` and ``guidance_scale``; returns the ``w`` that acts: the plain rule's
        (4.0 when not given), or the guider's own."""
        if guidance_scale is not None and (
            not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale)
        ):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if guider is None:
            return DEFAULT_GUIDANCE_SCALE if guidance_scale is None else float(guidance_scale)
        if not isinstance(guider, BaseGuidance):
            raise TypeError(
                f"guider must be a diffusers guider (diffusers.guiders.BaseGuidance), got "
                f"{type(guider).__name__}"
            )
        if (
            list(type(guider)._input_predictions) != GUIDER_PREDICTIONS
            or type(guider).prepare_models is not BaseGuidance.prepare_models
        ):
            raise TypeError(
                f"{type(guider).__name__} needs the predictions {type(guider)._input_predictions} or "
                "changes the denoiser between them; this pipeline computes the conditional and the "
                "unconditional prediction in one batched call, so it takes guiders that combine those "
                "two: ClassifierFreeGuidance, AdaptiveProjectedGuidance, TangentialClassifierFreeGuidance…"
            )
        # A scale beside a guider that has its own is refused rather than silently overridden: diffusers'
        # pipelines refuse conflicting inputs in check_inputs ("Cannot forward both ...") and never pick
        # one; the guider's scale is the one that would act. The same value twice is no conflict.
        own = getattr(guider, "guidance_scale", None)
        if guidance_scale is not None and guidance_scale != own:
            has = f"its own guidance_scale={own}" if own is not None else "no guidance_scale"
            raise ValueError(
                f"guidance_scale={guidance_scale} was passed beside guider={type(guider).__name__}, which has "
                f"{has}; the guider combines the predictions, so set the scale on it "
                f"({type(guider).__name__}(guidance_scale=...)) and leave guidance_scale out"
            )
        return own

    def apply_guider(
        self,
        guider: BaseGuidance,
        batches: list[Any],
        pred_cond: torch.Tensor,
        pred_uncond: torch.Tensor,
        latents: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """Combine the two predictions through ``guider`` (its ``__call__`` on the batches that its
        ``prepare_inputs`` returned), in x̂_0 space for APG and in the model's own space otherwise."""
        if not isinstance(guider, X0_GUIDERS):
            # prepare_inputs returns the batches in the order of GUIDER_PREDICTIONS: conditional first
            batches[0].noise_pred, batches[1].noise_pred = pred_cond, pred_uncond
            return guider(batches).pred
        kind = prediction_type(self.scheduler)
        _, alpha, sigma = noise_levels(self.scheduler, torch.as_tensor(timestep).flatten().cpu())
        alpha, sigma = alpha.to(latents.device, latents.dtype), sigma.to(latents.device, latents.dtype)
        batches[0].noise_pred, batches[1].noise_pred = (
            to_x0(p, latents, alpha, sigma, kind) for p in (pred_cond, pred_uncond)
        )
        return from_x0(guider(batches).pred, latents, alpha, sigma, kind)  # σ > 0 at every step

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        """One denoiser call on ``latents`` (a batch) at the scheduler's ``timestep``."""
        if self.transformer is None:
            return self.unet(latents, timestep, class_labels=class_labels).sample
        timesteps = torch.as_tensor(timestep, device=latents.device).expand(latents.shape[0])  # (B,) for DiT
        output = self.transformer(latents, timestep=timesteps, class_labels=class_labels).sample
        # a DiT with learned variance returns [prediction, variance] along channels: keep the first
        # (as DiTPipeline does)
        return output[:, : latents.shape[1]]

    @torch.no_grad()
    def __call__(
        self,
        class_labels: torch.Tensor | list[int] | int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        guider: BaseGuidance | None = None,
        atom_scale: float = 0.0,
        atom_active_range: tuple[float, float] = DEFAULT_ACTIVE_RANGE,
        atom_site: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        r"""Sample one image per class label, with classifier-free guidance.

        Args:
            class_labels (`list[int]`, `torch.Tensor` or `int`): one label per image, in
                ``[0, num_classes)``; the null label ``num_classes`` samples unconditionally. Required:
                their number is the number of images (there is no ``batch_size``).
            guidance_scale (`float`, *optional*, 4.0 when not given): ``w`` of
                ``ε̂ = ε̂_u + w (ε̂_c − ε̂_u)``; CFG is on when ``w > 1``, and ``w ≤ 1`` samples the
                conditional model alone (one batch). With a ``guider`` leave it out: the guider's own
                ``guidance_scale`` acts, and a different value here is an error.
            num_inference_steps (`int`, defaults to 50): denoising steps.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): for reproducible
                sampling.
            eta (`float`, defaults to 0.0): η of DDIM: 0 is deterministic DDIM, 1 is DDPM. A flow model
                takes only 0 (its Euler steps are deterministic).
            latents (`torch.Tensor`, *optional*): the initial noise, instead of drawing it.
            guider (`diffusers.guiders.BaseGuidance`, *optional*): combines the conditional and the
                unconditional prediction instead of the rule above, e.g.
                ``ClassifierFreeGuidance(guidance_scale=w, start=a, stop=b)`` (guidance only on the steps
                ``[a N, b N)``: the guidance interval of Kynkäänniemi et al. 2024) or
                ``AdaptiveProjectedGuidance(guidance_scale=w, eta=η)`` (APG, Sadat et al. 2024; applied
                to the denoised predictions ``x̂_0``, as its authors do). It is given the step with
                ``set_state`` and its batches with ``prepare_inputs`` (which also resets APG's momentum
                at step 0); at steps where it asks for one prediction only, only the conditional batch is
                computed and used as it is.
            atom_scale (`float`, defaults to 0.0): ``γ`` of atom guidance
                ([`~atomgen.pipelines.AtomGuidance`]); 0 samples as without it.
            atom_active_range (`tuple[float, float]`, defaults to `(0.4, 1.0)`): where atom guidance is on,
                as fractions of the trajectory (1 = pure noise).
            atom_site (`str`, *optional*): the denoiser module to separate at; defaults to
                ``separation_site``.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`; with a ``vae`` also
                `"latent"`, the latents before decoding.
            return_dict (`bool`, defaults to `True`): return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): called as ``callback_on_step_end(pipe, i, t,
                callback_kwargs)`` after each step; it may return ``{"latents": ...}`` to replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the tensors passed in
                ``callback_kwargs``; only `"latents"`.
            kwargs: the deprecated names of atom guidance's options, ``guidance_strength``,
                ``guidance_interval`` and ``guidance_site`` (a ``FutureWarning``; removed in the next release).

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images, in ``[0, 1]``.
        """
        # 1. Check inputs (the keywords first: a batch_size= is answered with what to pass instead)
        atom_scale, atom_active_range, atom_site = self.check_call_options(
            atom_scale, atom_active_range, atom_site, kwargs
        )
        class_labels = self.check_class_labels(class_labels)
        batch_size = class_labels.numel()
        tensor_inputs = self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        guidance_scale = self.check_guider(guider, guidance_scale)

        # 2. Sample gaussian noise to begin the loop; the unconditional half gets the null label
        latents = self.prepare_latents(batch_size, generator, latents)
        null_labels = torch.full_like(class_labels, self.null_class_label)

        # 3. Set the timesteps, and the options of the scheduler's step (a flow's takes no η)
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 4. Denoising loop; atom guidance, when on, corrects the denoiser's output in a hook on it
        try:
            with self.atom_guidance(atom_scale, atom_active_range, atom_site):
                for i, t in enumerate(self.progress_bar(timesteps)):
                    # 4.1 whether this step guides: the guider decides per step (an interval), else w > 1
                    if guider is not None:
                        guider.set_state(step=i, num_inference_steps=len(timesteps), timestep=t)
                        # prepare_inputs also resets APG's momentum at step 0 (prepare_models and
                        # cleanup_models serve guiders that change the UNet per batch: refused)
                        batches = guider.prepare_inputs({"class_labels": (class_labels, null_labels)})
                        self._do_classifier_free_guidance = len(batches) == 2
                    else:
                        self._do_classifier_free_guidance = guidance_scale > 1.0

                    # 4.2 expand the latents for classifier-free guidance: [uncond, cond]
                    if self.do_classifier_free_guidance:
                        latent_model_input = torch.cat([latents, latents])
                        labels_input = torch.cat([null_labels, class_labels])
                    else:
                        latent_model_input, labels_input = latents, class_labels

                    # 4.3 predict the noise (or v, or the flow's velocity), both halves in one call
                    model_output = self.predict(latent_model_input, t, labels_input)

                    # 4.4 classifier-free guidance: ε̂ = ε̂_u + w (ε̂_c − ε̂_u), or the guider's rule
                    if self.do_classifier_free_guidance:
                        pred_uncond, pred_cond = model_output.chunk(2)
                        if guider is None:
                            model_output = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                        else:
                            model_output = self.apply_guider(
                                guider, batches, pred_cond, pred_uncond, latents, t
                            )

                    # 4.5 compute the previous sample x_t -> x_t-1: DDIM with the variance that η asks
                    # for, or the flow's Euler step x_σ_next = x_σ + (σ_next − σ) v
                    latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

                    # 4.6 let the callback see (and replace) the latents
                    latents = self.step_end(callback_on_step_end, tensor_inputs, i, t, latents)
        finally:  # outside a call the hooks must not read a doubled batch
            self._do_classifier_free_guidance = False

        # 5. Post-process: decode the latents with the VAE (a latent model), then images in [0, 1]
        image = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


__all__ = ["AtomClassConditionalPipeline"]
