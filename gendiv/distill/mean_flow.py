"""MeanFlow (Geng et al. 2025) as a distillation method, in the teacher's own ODE time σ (docs/adding_a_method.md).

The average velocity between noise levels s < σ on a trajectory of dx/dσ = v(x, σ) is u(x_σ, s, σ) =
(x_σ − x_s)/(σ − s). Differentiating (σ − s)·u = x_σ − x_s along the trajectory gives the MeanFlow identity

    u = v − (σ − s)·du/dσ,    du/dσ = ∂_x u · v + ∂_σ u,

which holds in any time variable (the paper states it in flow time t; σ is a reparametrisation of the same ODE).
The student predicts X_θ(x, σ; r = s/σ) and u_θ = (x − X_θ)/σ, so the jump is the DDIM-like step
x_s = (s/σ)·x + (1 − s/σ)·X_θ: X_θ is the denoiser at r = 1 and the flow map to 0 at r = 0. The ratio r enters the
network as the scalar condition ``flow_map_r`` (``with_scalar_condition``, zero-initialised, so a student copied
from the teacher starts as the teacher's DDIM step). The target comes from one JVP of the stop-gradient student,
X_tgt = x − σ·(v − (σ − s)·du/dσ), with v the teacher's velocity (x − Dᵀ)/σ; the loss is ‖X_θ − X_tgt‖² with
MeanFlow's adaptive weight 1/(‖·‖² + c)^p. Sampling is deterministic: k flow-map jumps σ_init → σ₁ → … → 0.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..condition import Condition
from ..models.denoiser import with_scalar_condition
from ..models.generator import FLOW_MAP_RATIO
from ..space import append_dims
from .consistency import ConsistencyMethod, SigmaRangeOptions
from .continuous_consistency import unwrapped
from .contract import STUDENT, StepDraws
from .tangents import JVPMode, jvp

RATIO = FLOW_MAP_RATIO  # the student's scalar condition r = s/σ ∈ [0, 1]


class MeanFlowOptions(SigmaRangeOptions):
    name: Literal["mean_flow"] = "mean_flow"
    p_mean: float = -0.4                              # ln σ ~ N(p_mean, p_std²), clamped to [sigma_min, sigma_max]
    p_std: float = Field(1.6, gt=0)
    instantaneous_fraction: float = Field(0.75, ge=0, le=1)   # share of samples with s = σ (MeanFlow: 75 %)
    adaptive_p: float = Field(1.0, ge=0)              # weight 1/(‖X_θ − X_tgt‖² + c)^p (MeanFlow: p = 1)
    adaptive_c: float = Field(1e-3, gt=0)
    jvp: JVPMode = "auto"
    fd_step: float = Field(1e-3, gt=0)                # relative finite-difference step (h = fd_step·σ)


def with_ratio(cond: Condition | None, r: torch.Tensor) -> Condition:
    if cond is None:
        return Condition(scalars={RATIO: r})
    return Condition(cond.class_labels, cond.drop, {**cond.scalars, RATIO: r}, cond.text_embeds)


def average_velocity(student, x, s, sigma, cond):
    """u_θ(x, s, σ) = (x − X_θ(x, σ; s/σ))/σ."""
    x_hat = student(x, with_ratio(cond, s / sigma), sigma=sigma)
    return (x - x_hat) / append_dims(sigma, x.ndim)


def flow_map_step(student, x, sigma: float, s: float, cond):
    """x_s = x − (σ − s)·u_θ(x, s, σ)."""
    b = x.shape[0]
    sig, ss = torch.full((b,), sigma, device=x.device), torch.full((b,), s, device=x.device)
    return x - (sigma - s) * average_velocity(student, x, ss, sig, cond)


class MeanFlow(ConsistencyMethod):
    """MeanFlow distillation: the student learns the average velocity u(x, s, σ) of the teacher's ODE."""

    name = "mean_flow"
    Options = MeanFlowOptions

    def networks(self, factory):
        student = factory.student
        if RATIO not in (student.backbone.config.scalar_names or []):  # the student takes r, starting at the teacher
            student.backbone = with_scalar_condition(student.backbone, RATIO)
            student.register_to_config(backbone_config={k: v for k, v in student.backbone.config.items()
                                                        if not k.startswith("_")})
        return super().networks(factory)

    def draw_levels(self, n: int, draws: StepDraws):
        o = self.options
        sigma = (o.p_mean + o.p_std * torch.randn(n, generator=draws.rng)).exp().clamp(o.sigma_min, o.sigma_max)
        r = torch.rand(n, generator=draws.rng)
        r = torch.where(torch.rand(n, generator=draws.rng) < o.instantaneous_fraction, torch.ones_like(r), r)
        return (r * sigma).to(draws.device), sigma.to(draws.device)

    def target(self, student, x, s, sigma, v, cond):
        """X_tgt = x − σ·u_tgt with u_tgt = v − (σ − s)·du/dσ (the MeanFlow identity), from one JVP."""
        o = self.options
        _, du = jvp(lambda xx, ss: average_velocity(student, xx, s, ss, cond), (x, sigma),
                    (v, torch.ones_like(sigma)), mode=o.jvp, fd_step=o.fd_step * sigma)
        u_target = v - append_dims(sigma - s, x.ndim) * du
        return x - append_dims(sigma, x.ndim) * u_target

    def loss(self, update, nets, draws: StepDraws):
        o = self.options
        x, cond = draws.real(draws.batch_size)
        s, sigma = self.draw_levels(x.shape[0], draws)
        x_sigma = x + append_dims(sigma, x.ndim) * draws.randn_like(x)
        with torch.no_grad():
            v = (x_sigma - draws.teacher(x_sigma, sigma, cond)) / append_dims(sigma, x.ndim)
        target = self.target(unwrapped(nets[STUDENT]), x_sigma, s, sigma, v, cond).detach()
        pred = nets[STUDENT](x_sigma, with_ratio(cond, s / sigma), sigma=sigma)
        err = (pred.float() - target.float()).flatten(1).pow(2).sum(1)
        loss = (err / (err.detach() + o.adaptive_c).pow(o.adaptive_p)).mean()
        return loss, {"mean_flow_loss": float(err.mean().detach())}

    @torch.no_grad()
    def sample(self, student, z, cond, generator=None):
        """Deterministic flow-map jumps on [σ_init, σ₁, …, σ_{k−1}, 0] (``generator`` is unused)."""
        sigmas = self.sigma_grid(student) + [0.0]
        x = z * sigmas[0]
        for sigma, s in zip(sigmas, sigmas[1:]):
            x = flow_map_step(student, x, sigma, s, cond)
        return x
