"""Sampling a mirror flow-matching model on a convex domain (simplex, ball or box; docs/mirror_flow.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..mirror import DOMAINS, dual_dim, from_dual, student_t
from .output import check_positive_int, postprocess


@dataclass
class MirrorFlowOutput(BaseOutput):
    """``images``: the points inside the domain [B, D]; ``dual``: the dual-space samples (with ``return_dual``)."""

    images: torch.Tensor
    dual: torch.Tensor | None = None


class MirrorFlowMatchingPipeline(DiffusionPipeline):
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
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 100, generator: torch.Generator | None = None,
                 output_type: str = "pt", return_dict: bool = True, return_dual: bool = False):
        """Generate points inside the domain.

        Args:
            batch_size: number of samples.
            num_inference_steps: Euler steps (one velocity evaluation each).
            generator: torch.Generator for a reproducible prior draw.
            output_type: ``"pt"`` or ``"np"`` (points).
            return_dict: return a ``MirrorFlowOutput`` (``.images``: the points) instead of a tuple.
            return_dual: also return the dual-space samples (``.dual``), before the inverse mirror map.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        check_positive_int(num_inference_steps, "num_inference_steps")
        device = self._execution_device
        shape = (batch_size, dual_dim(self.config.domain, self.data_dim))
        y = student_t(shape, self.config.prior_dof, self.config.prior_scale, generator).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            v = self.velocity(y, t / self.scheduler.config.num_train_timesteps)
            y = self.scheduler.step(v, t, y, return_dict=False)[0]
        x = from_dual(y.double(), self.config.domain).to(y.dtype)
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out, y) if return_dual else (out,)
        return MirrorFlowOutput(images=out, dual=y if return_dual else None)
