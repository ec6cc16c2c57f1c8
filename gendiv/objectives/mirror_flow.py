"""Mirror flow matching on a convex domain (docs/mirror_flow.md; the mirror maps in gendiv/mirror.py).

    y₁ = ∇φ(x₀) (data in the dual space),  y_prior ~ Student-t(ν)·scale,  t ~ U(0, 1)
    y_t = (1 − t)·y₁ + t·y_prior,  loss = E‖v_θ(y_t, t) − (y_prior − y₁)‖²

(diffusers' FlowMatchEulerDiscreteScheduler convention: t = 1 is the prior, the velocity points from data to noise).
The minimiser is v*(y, t) = E[y_prior − y₁ | y_t = y]; Euler from t = 1 to 0 transports the prior to the dual data
law, and ∇φ* maps every sample strictly inside the domain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mirror import DOMAINS, student_t, to_dual


@dataclass
class MirrorFlowConfig:
    """``objective: mirror_flow`` (section ``mirror_flow``)."""

    domain: str = "simplex"     # simplex | ball | box: the data must lie in it (the simplex: rows summing to 1)
    prior_dof: float = 5.0      # ν of the Student-t prior (heavy tails like the dual data near the boundary)
    prior_scale: float = 1.0
    num_steps: int = 100        # Euler steps of the evaluation sampler and the exported pipeline's default

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"mirror_flow.domain must be one of {DOMAINS}, got {self.domain!r}")
        if not (self.prior_dof > 0 and self.prior_scale > 0):
            raise ValueError(f"mirror_flow: need prior_dof > 0 and prior_scale > 0, got {self.prior_dof}, "
                             f"{self.prior_scale}")
        if self.num_steps < 1:
            raise ValueError(f"mirror_flow.num_steps must be ≥ 1, got {self.num_steps}")


def mirror_flow_loss(velocity, x0: torch.Tensor, domain: str, prior_dof: float = 5.0, prior_scale: float = 1.0,
                     generator=None, t: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                     reduce: bool = True) -> torch.Tensor:
    """Mean over dual coordinates of (v_θ(y_t, t) − (y_prior − y₁))² per sample (then over the batch)."""
    y1 = to_dual(x0.double(), domain).to(x0.dtype)
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    if prior is None:
        prior = student_t(y1.shape, prior_dof, prior_scale, generator, x0.dtype).to(x0.device)
    y_t = (1 - t[:, None]) * y1 + t[:, None] * prior
    per_sample = ((velocity(y_t, t).float() - (prior - y1).float()) ** 2).mean(1)
    return per_sample.mean() if reduce else per_sample
