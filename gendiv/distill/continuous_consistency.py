"""Continuous-time consistency distillation, sCM (Lu & Song 2024) on the contract.

TrigFlow time t = arctan(σ/σ_d) and gendiv's EDM denoiser agree exactly: c_skip = cos²t and c_out = σ_d sin t, so
sCM's f_θ(x_t, t) = cos t·x_t − σ_d sin t·F_θ is D_θ(x_σ, σ) read on x_σ = x_t / cos t. The continuous-time limit of
the consistency loss has gradient E[∇_θ f_θᵀ · df_θ⁻/dt] (CM paper Thm. 6; sCM eq. 8), with the total derivative
along the teacher's ODE:

    df/dt = (∂_x f · v + ∂_σ f) · dσ/dt,    v = dx/dσ = (x − Dᵀ(x, σ))/σ,    dσ/dt = (σ² + σ_d²)/σ_d,

computed as one JVP of the student (``tangents.jvp``). sCM's tangent normalisation g ← g/(‖g‖ + c) bounds the
update; the surrogate ½‖f_θ − sg(f_θ − g)‖² has exactly this gradient. σ is lognormal (sCM: tan t = e^τ/σ_d,
τ ~ N(P_mean, P_std²), i.e. σ = e^τ). For the exact consistency function df/dt = 0 on every trajectory.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..space import SIGMA_DATA, append_dims
from .consistency import ConsistencyMethod, SigmaRangeOptions
from .contract import STUDENT, StepDraws
from .losses import surrogate_loss
from .tangents import JVPMode, jvp


class SCMOptions(SigmaRangeOptions):
    name: Literal["scm"] = "scm"
    p_mean: float = -1.0                              # σ = e^τ, τ ~ N(p_mean, p_std²) (sCM: −1.0, 1.4)
    p_std: float = Field(1.4, gt=0)
    tangent_norm_c: float = Field(0.1, gt=0)          # g ← g / (‖g‖ + c) per sample (sCM §4)
    jvp: JVPMode = "auto"                             # torch.func.jvp; finite differences for untraceable modules
    fd_step: float = Field(1e-3, gt=0)                # relative finite-difference step (h = fd_step·σ)


def unwrapped(net):
    """The module inside a DDP wrapper: a no-gradient tangent pass needs no gradient synchronisation."""
    return getattr(net, "module", net)


def consistency_tangent(student, x, sigma, velocity, cond, mode: JVPMode = "auto", fd_step: float = 1e-3):
    """(f(x, σ), df/dσ along the ODE): the JVP of (x, σ) ↦ D(x, σ) with tangent (v, 1)."""
    return jvp(lambda xx, ss: student(xx, cond, sigma=ss), (x, sigma), (velocity, torch.ones_like(sigma)),
               mode=mode, fd_step=fd_step * sigma)


class SCM(ConsistencyMethod):
    """sCM distillation: the student's df⁻/dt along the teacher's ODE, normalised, as the update direction."""

    name = "scm"
    Options = SCMOptions

    def draw_sigma(self, n: int, draws: StepDraws) -> torch.Tensor:
        o = self.options
        tau = o.p_mean + o.p_std * torch.randn(n, generator=draws.rng)
        return tau.exp().clamp(o.sigma_min, o.sigma_max).to(draws.device)

    def trig_tangent(self, student, x_sigma, sigma, cond, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(f⁻, df⁻/dt) at (x_σ, σ), t the TrigFlow time."""
        with torch.no_grad():
            v = (x_sigma - teacher(x_sigma, sigma, cond)) / append_dims(sigma, x_sigma.ndim)
        o = self.options
        f, df_dsigma = consistency_tangent(unwrapped(student), x_sigma, sigma, v, cond, o.jvp, o.fd_step)
        return f, df_dsigma * append_dims((sigma ** 2 + SIGMA_DATA ** 2) / SIGMA_DATA, x_sigma.ndim)

    def loss(self, update, nets, draws: StepDraws):
        x, cond = draws.real(draws.batch_size)
        sigma = self.draw_sigma(x.shape[0], draws)
        x_sigma = x + append_dims(sigma, x.ndim) * draws.randn_like(x)
        _, g = self.trig_tangent(nets[STUDENT], x_sigma, sigma, cond, draws.teacher)
        norm = g.flatten(1).norm(dim=1)
        g = g / append_dims(norm + self.options.tangent_norm_c, g.ndim)
        pred = nets[STUDENT](x_sigma, cond, sigma=sigma)
        loss = surrogate_loss(pred, g)
        return loss, {"scm_loss": float(loss.detach()), "tangent_norm": float(norm.mean())}
