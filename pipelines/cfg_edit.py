"""The base of the methods that edit classifier-free guidance's two predictions: :class:`CFGEdit`.

A CFG pipeline combines the conditional and the unconditional prediction itself, ``u + w (c − u)``.
A method that returns edited halves ``(c', u')`` from the denoiser makes that same arithmetic yield the
method: ``u' = c`` turns guidance off at a step (:class:`~.guidance_interval.GuidanceInterval`),
``u' = c − N`` gives ``c + (w − 1) N`` for any update ``N`` (:class:`~.apg.APG`), and a guiding model's
prediction as ``u'`` gives autoguidance (:class:`~.autoguidance.AutoGuidance`). The pipeline's own loop,
scheduler and ``guidance_scale`` stay as they are.

Two layouts are read: the doubled batch of one call (``[uncond, cond]``, or ``[cond, uncond]`` as
diffusers' DiT pipeline orders it), and two calls per step on the same latents, the conditional first
(Flux's true CFG); there only the second call's output, the unconditional prediction, can be edited.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .denoiser_hook import DenoiserCall, DenoiserHook, prediction_tensor


class CFGEdit(DenoiserHook):
    """A method that edits the conditional and unconditional predictions of classifier-free guidance.

    A subclass implements :meth:`edit`, and may override :meth:`acts_at` (whether it acts at a step).
    Learned-variance channels (DiT) are kept; only the prediction's first ``C`` channels are edited.
    """

    needs_batch = False  # each sample's two predictions are edited on their own

    def setup(self) -> None:
        reason = cfg_refusal(self.pipe)
        if reason:
            raise ValueError(f"{type(self).__name__} edits classifier-free guidance, but {reason}")
        self._pending: tuple[DenoiserCall, torch.Tensor] | None = None  # the conditional call of a pair
        self._pair: tuple[DenoiserCall, torch.Tensor] | None = None

    def edit(
        self, call: DenoiserCall, cond: torch.Tensor, uncond: torch.Tensor, cond_call: DenoiserCall
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The edited ``(cond, uncond)`` predictions (first ``C`` channels) of the guided rows.

        Args:
            call: the call that returned ``uncond`` (and ``cond``, when the batch is doubled).
            cond, uncond: the two predictions, in the model's parameterisation.
            cond_call: the call with the conditional inputs (``call`` itself when doubled).
        """
        raise NotImplementedError

    def acts_at(self, call: DenoiserCall) -> bool:
        """Whether the method acts at this call's step (default: at every step)."""
        return True

    def where(self) -> str:
        return (
            "on classifier-free guidance's two predictions (guidance_scale > 1, or Flux's true_cfg_scale > 1)"
        )

    def sampling_ended(self) -> None:
        self._pending = None
        super().sampling_ended()

    def before_forward(self, call: DenoiserCall) -> bool:
        self._pair = None
        if call.doubled:
            return self.acts_at(call)
        pending, self._pending = self._pending, None
        if pending is not None and _same_step(pending[0], call):
            self._pair = pending  # the second call of a pair: the unconditional prediction
            return self.acts_at(call)
        call.acted = False  # perhaps the conditional call of a pair: keep its prediction
        return True

    def after_forward(self, call: DenoiserCall, output: Any) -> Any:
        if output is None:
            return None
        prediction = prediction_tensor(output)
        channels = call.sample.shape[1]
        if not call.doubled and self._pair is None:  # remember it, in case the next call pairs with it
            self._pending = (call, prediction[:, :channels])
            return None
        if call.doubled:
            cond_rows, uncond_rows = call.guided, call.unguided
            cond, uncond = prediction[cond_rows, :channels], prediction[uncond_rows, :channels]
            new_cond, new_uncond = self.edit(call, cond, uncond, call)
            edited = prediction.clone()
            edited[cond_rows, :channels] = new_cond.to(prediction.dtype)
            edited[uncond_rows, :channels] = new_uncond.to(prediction.dtype)
        else:
            (cond_call, cond), self._pair = self._pair, None
            new_cond, new_uncond = self.edit(call, cond, prediction[:, :channels], cond_call)
            if new_cond is not cond:
                raise RuntimeError(
                    f"{type(self).__name__} must change the conditional prediction, which this pipeline "
                    "computes in a call of its own (two calls per step, as Flux's true CFG): not supported"
                )
            edited = prediction.clone()
            edited[:, :channels] = new_uncond.to(prediction.dtype)
        return _with_prediction(output, edited)


def cfg_refusal(pipe: Any) -> str | None:
    """Why ``pipe`` cannot take a method that edits classifier-free guidance, or ``None`` when it can:
    its ``__call__`` must take a ``guidance_scale`` (or Flux's ``true_cfg_scale``)."""
    parameters = inspect.signature(type(pipe).__call__).parameters if callable(pipe) else {}
    if "guidance_scale" not in parameters and "true_cfg_scale" not in parameters:
        return (
            f"{type(pipe).__name__} does no classifier-free guidance (its __call__ takes no guidance_scale); "
            "use a CFG pipeline (StableDiffusionPipeline, DiTPipeline, AtomClassConditionalPipeline…)"
        )
    return None


def _same_step(first: DenoiserCall, second: DenoiserCall) -> bool:
    """Whether two consecutive calls evaluate the same latents at the same timestep (a CFG pair)."""
    return (first.sample is second.sample or torch.equal(first.sample, second.sample)) and torch.equal(
        first.fraction, second.fraction
    )


def _with_prediction(output: Any, prediction: torch.Tensor) -> Any:
    """The denoiser output with its prediction tensor replaced."""
    if isinstance(output, torch.Tensor):
        return prediction
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    output.sample = prediction
    return output


__all__ = ["CFGEdit", "cfg_refusal"]
