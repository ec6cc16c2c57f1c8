"""Consistency models on the contract (docs/adding_a_method.md walks through CD).

A consistency function f_θ(x_σ, σ) maps every point of a probability-flow trajectory to its end at σ_min. gendiv's
student is a denoiser D_θ, and f_θ(x, σ) = D_θ(x, σ) (``OneStepGenerator(x, cond, sigma=σ)``): EDM's
preconditioning has c_skip(σ_min) ≈ 1, c_out(σ_min) ≈ σ_min, so f_θ(x, σ_min) ≈ x is built in (the CM paper's exact
boundary form differs by O(σ_min²/σ_data²)). One-step sampling is f_θ(σ_max z, σ_max) = G(z) with σ_init = σ_max.

* CD (Song et al. 2023, Alg. 2): on a Karras grid σ_1 < … < σ_N, one teacher Heun step from x_{σ_{n+1}} to σ_n,
  loss d(f_θ(x_{σ_{n+1}}, σ_{n+1}), f_θ⁻(x̂_{σ_n}, σ_n)) with θ⁻ an EMA of θ held by the method.
* iCT (Song & Dhariwal 2023): no teacher and no EMA target (θ⁻ = stop-grad θ); the same noise at both σ's;
  pseudo-Huber d with c = 0.00054·√d; σ_i drawn from a discretised lognormal; N doubles on a curriculum;
  weight λ = 1/(σ_{i+1} − σ_i).
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..space import append_dims, karras_sigmas
from .contract import STUDENT, DistillMethod, StepDraws, Update
from .few_step import FewStepSection, MultiStepSampling
from .losses import pseudo_huber
from .options import MethodOptions

PSEUDO_HUBER_C = 0.00054  # iCT §3.3: c = 0.00054·√d (d: data dimension)


def karras_grid(n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """σ_1 < … < σ_n on Karras' grid (CM paper eq. 5 / EDM eq. 5, increasing order)."""
    return karras_sigmas(n, sigma_min, sigma_max, rho, append_zero=False).flip(0)


def heun_step(denoiser, x, sigma, sigma_next, cond):
    """One Heun step of dx/dσ = (x − D(x, σ))/σ from σ to σ_next (per-sample [B] σ's; EDM Alg. 1)."""
    s, s_next = append_dims(sigma, x.ndim), append_dims(sigma_next, x.ndim)
    d = (x - denoiser(x, sigma, cond)) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next, cond)) / s_next
    return x + (s_next - s) * (d + d_next) / 2


def consistency_distance(pred, target, metric: str, huber_c: float) -> torch.Tensor:
    """Per sample: ‖pred − target‖² (``l2``) or √(‖pred − target‖² + c²) − c (``pseudo_huber``)."""
    if metric == "pseudo_huber":
        return pseudo_huber(pred, target, huber_c)
    return (pred.float() - target.float()).flatten(1).pow(2).sum(1)


def default_huber_c(x: torch.Tensor) -> float:
    return PSEUDO_HUBER_C * math.sqrt(x[0].numel())


class SigmaRangeOptions(MethodOptions):
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    few_step: FewStepSection = Field(default_factory=FewStepSection)  # evaluation: k passes on this σ grid

    @model_validator(mode="after")
    def _range(self):
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"need sigma_max > sigma_min, got {self.sigma_min}, {self.sigma_max}")
        return self


class DiscreteOptions(SigmaRangeOptions):
    """Consistency on a Karras grid with a distance d."""

    rho: float = Field(7.0, gt=0)
    metric: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: float | None = Field(None, gt=0)     # pseudo-Huber c; None: 0.00054·√d


class ConsistencyMethod(MultiStepSampling, DistillMethod):
    """One update, ``generator``; the student is the consistency function."""

    def updates(self):
        return (Update(STUDENT, (STUDENT,)),)

    def schedule(self, step: int):
        return (STUDENT,)

    def needs_real_data(self) -> bool:
        return True  # trajectories start at real samples

    def networks(self, factory):
        self.record_grid(factory.student)
        return {}


class DiscreteConsistencyMethod(ConsistencyMethod):
    """Consistency between adjacent points of a Karras grid, measured by ``metric``."""

    def distance(self, pred, target) -> torch.Tensor:
        o = self.options
        c = o.huber_c if o.huber_c is not None else default_huber_c(pred)
        return consistency_distance(pred, target, o.metric, c)


# -------------------------------------------------------------------------------------------------
# Consistency distillation
# -------------------------------------------------------------------------------------------------
class CDOptions(DiscreteOptions):
    name: Literal["cd"] = "cd"
    num_scales: int = Field(18, ge=2)                 # N, points of the Karras grid (CM paper, CIFAR-10: 18)
    target_ema: float = Field(0.95, ge=0, lt=1)       # μ: θ⁻ ← μθ⁻ + (1 − μ)θ after each student update


class ConsistencyDistillation(DiscreteConsistencyMethod):
    """CD: teacher Heun step between adjacent Karras points, EMA target θ⁻ (frozen, checkpointed)."""

    name = "cd"
    Options = CDOptions

    def networks(self, factory):
        self.target = copy.deepcopy(factory.student).eval().requires_grad_(False)
        return super().networks(factory)

    def state_modules(self):
        return {"cd_target": self.target}

    def grid(self, device) -> torch.Tensor:
        o = self.options
        return karras_grid(o.num_scales, o.sigma_min, o.sigma_max, o.rho).to(device)

    def loss(self, update, nets, draws: StepDraws):
        x, cond = draws.real(draws.batch_size)
        sigmas = self.grid(x.device)
        n = torch.randint(0, len(sigmas) - 1, (x.shape[0],), generator=draws.rng).to(x.device)
        sigma, sigma_next = sigmas[n], sigmas[n + 1]
        x_next = x + append_dims(sigma_next, x.ndim) * draws.randn_like(x)
        with torch.no_grad():
            x_teacher = heun_step(draws.teacher, x_next, sigma_next, sigma, cond)
            target = self.target(x_teacher, cond, sigma=sigma)
        pred = nets[STUDENT](x_next, cond, sigma=sigma_next)
        loss = self.distance(pred, target).mean()
        return loss, {"consistency_loss": float(loss.detach())}

    @torch.no_grad()
    def after_update(self, update, nets, draws):
        student = getattr(nets[STUDENT], "module", nets[STUDENT])
        for pt, ps in zip(self.target.parameters(), student.parameters()):
            pt.lerp_(ps.detach().to(pt.dtype), 1 - self.options.target_ema)


# -------------------------------------------------------------------------------------------------
# Improved consistency training
# -------------------------------------------------------------------------------------------------
class ICTOptions(DiscreteOptions):
    name: Literal["ict"] = "ict"
    s0: int = Field(10, ge=1)                         # initial discretisation steps
    s1: int = Field(1280, ge=1)                       # final discretisation steps
    curriculum_steps: int | None = Field(None, ge=1)  # K, the curriculum's length; None: the run's (set at load)
    p_mean: float = -1.1                              # discretised lognormal σ sampling (iCT §3.5)
    p_std: float = Field(2.0, gt=0)
    metric: Literal["l2", "pseudo_huber"] = "pseudo_huber"

    @model_validator(mode="after")
    def _steps(self):
        if self.s1 < self.s0:
            raise ValueError(f"need s1 ≥ s0, got s0={self.s0}, s1={self.s1}")
        return self


def ict_num_scales(step: int, total_steps: int, s0: int, s1: int) -> int:
    """N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log₂⌊s1/s0⌋ + 1)⌋ (iCT eq. 7)."""
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)), i < N (iCT eq. 9):
    the lognormal's mass between adjacent grid points."""
    cdf = torch.erf((sigmas.double().log() - p_mean) / (math.sqrt(2) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


class ImprovedConsistencyTraining(DiscreteConsistencyMethod):
    """iCT: from data alone; θ⁻ = stop-grad θ; pseudo-Huber; discretised lognormal σ; doubling curriculum."""

    name = "ict"
    Options = ICTOptions
    needs_teacher = False

    def check_run(self, steps: int):
        if self.options.curriculum_steps is None:  # K defaults to the run's length, recorded in the saved config
            self.options.curriculum_steps = steps

    def grid(self, step: int, device) -> torch.Tensor:
        o = self.options
        if o.curriculum_steps is None:
            raise ValueError("method.curriculum_steps is unset: give it, or build the method through a DistillConfig "
                             "(which sets it to run.steps)")
        n = ict_num_scales(step, o.curriculum_steps, o.s0, o.s1)
        return karras_grid(n, o.sigma_min, o.sigma_max, o.rho).to(device)

    def loss(self, update, nets, draws: StepDraws):
        o = self.options
        x, cond = draws.real(draws.batch_size)
        sigmas = self.grid(draws.step, x.device)
        probs = lognormal_index_probs(sigmas, o.p_mean, o.p_std)
        i = torch.multinomial(probs.cpu(), x.shape[0], replacement=True, generator=draws.rng).to(x.device)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        noise = draws.randn_like(x)
        with torch.no_grad():
            target = nets[STUDENT](x + append_dims(sigma, x.ndim) * noise, cond, sigma=sigma)
        pred = nets[STUDENT](x + append_dims(sigma_next, x.ndim) * noise, cond, sigma=sigma_next)
        weight = 1.0 / (sigma_next - sigma)
        loss = (weight * self.distance(pred, target)).mean()
        return loss, {"consistency_loss": float(loss.detach()), "num_scales": float(len(sigmas))}
