"""Sampling a mirror flow-matching model on a convex domain (simplex, ball or box; docs/mirror_flow.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput

from ..mirror import DOMAINS, dual_dim, from_dual, student_t
from .base import PipelineBase
from .output import check_generator, check_latents, check_positive_int, draw_per_sample, postprocess


@dataclass
class MirrorFlowOutput(BaseOutput):
    """``images``: the points inside the domain [B, D]; ``dual``: the dual-space samples (with ``return_dual``)."""

    images: torch.Tensor
    dual: torch.Tensor | None = None


class MirrorFlowMatchingPipeline(PipelineBase):
    """A :class:`~gendiv.mirror.VelocityMLP` in the dual space of ``domain`` with diffusers'
    ``FlowMatchEulerDiscreteScheduler``: Student-t prior at t = 1, Euler to t = 0, then ∇φ* back into the domain.

    ``domain``, ``prior_dof`` and ``prior_scale`` are saved in ``model_index.json`` and restored by ``from_pretrained``.
    """

    model_cpu_offload_seq = "velocity"

    def __init__(self, velocity, scheduler: FlowMatchEulerDiscreteScheduler, domain: str = "simplex",
                 prior_dof: float = 5.0, prior_scale: float = 1.0):
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"unknown mirror domain {domain!r}; choose one of {DOMAINS}")
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"{type(scheduler).__name__} is not a FlowMatchEulerDiscreteScheduler")
        self.register_modules(velocity=velocity, scheduler=scheduler)
        self.register_to_config(domain=domain, prior_dof=prior_dof, prior_scale=prior_scale)

    @property
    def data_dim(self) -> int:
        """Dimension of the generated points (the simplex's K + 1 coordinates for a K-dimensional dual)."""
        d = self.velocity.config.dim
        return d + 1 if self.config.domain == "simplex" else d

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 100, generator=None, latents=None,
                 output_type: str = "pt", return_dict: bool = True, return_dual: bool = False,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """Generate points inside the domain.

        Args:
            batch_size: number of samples.
            num_inference_steps: Euler steps (one velocity evaluation each).
            generator: a torch.Generator, or a list of one per sample (sample i drawn from generator i alone).
            latents: dual-space prior samples [B, m] to start from instead of a Student-t draw.
            output_type: ``"pt"`` or ``"np"`` (points).
            return_dict: return a ``MirrorFlowOutput`` (``.images``: the points) instead of a tuple.
            return_dual: also return the dual-space samples (``.dual``), before the inverse mirror map.
            callback_on_step_end: ``callback(pipe, i, t, tensors) -> dict`` after each step (diffusers' convention;
                ``"latents"`` is the dual-space sample).
            callback_on_step_end_tensor_inputs: the tensors it receives.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        check_positive_int(num_inference_steps, "num_inference_steps")
        check_generator(generator, batch_size)
        names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        shape = (batch_size, dual_dim(self.config.domain, self.data_dim))
        if latents is None:
            c = self.config
            y = draw_per_sample(lambda sh, g: student_t(sh, c.prior_dof, c.prior_scale, g), shape, generator).to(device)
        else:
            y = check_latents(latents, shape, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            v = self.velocity(y, t / self.scheduler.config.num_train_timesteps)
            y = self.scheduler.step(v, t, y, return_dict=False)[0]
            if callback_on_step_end is not None:
                y = self._step_end(callback_on_step_end, names, i, t, {"latents": y})["latents"]
        x = from_dual(y.double(), self.config.domain).to(y.dtype)
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out, y) if return_dual else (out,)
        return MirrorFlowOutput(images=out, dual=y if return_dual else None)
