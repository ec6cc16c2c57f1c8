"""Score-identity distillation: SiD (α), SiDA, and Uni-Instruct for any f-divergence (docs/methods.md §1–2).

These methods backpropagate through the frozen teacher and fake networks into x_σ (weights frozen, input gradients
on). With a = Dᵀ(x_σ), b = Dᶠ(x_σ), δ = a − b, e = b − x and a per-sample weight w:

    SiD(α):        L = w·[(1−α)‖δ‖² + δ·e]                                         (SiD, Zhou et al. 2024)
    Uni-Instruct:  L = w·[ 2h·((1−α*)‖δ‖² + δ·e) + ⟨x, sg[ω·δ/σ²]⟩ ],
                   α* = ½ + r·h'(r)/(2h(r)),   ω = −r²h''(r)‖δ‖² + 2r·h'(r)·(δ·e),    h = f''(r)·r²

The Uni-Instruct loss is *derived*, not ported (the published code is wrong in several places, docs/methods.md §2):
its gradient equals ∇_θ J_σ, J_σ(θ) = E_{x_σ∼q_θ,σ}[h(r)‖s_p − s_q‖²], exactly, when Dᵀ, Dᶠ and r are exact and
w = 1/σ⁴. The derivation, step by step, is in docs/uni_instruct.md; tests/test_score_identity.py checks it
against finite differences of J_σ by quadrature for every divergence. Reverse KL (h ≡ 1) gives α* = ½: the exact
Fisher-divergence gradient is 2× SiD's loss at α = ½ (SiD's default α = 1.2, and α = 1 as in the Uni-Instruct
code's "Grad(SIM)", are not gradients of J_σ).

The SiD-type part has a fused backward with the closed-form derivatives (docs/methods.md §1):
    ∂L/∂a = w[2(1−α)δ + e],   ∂L/∂b = w[(2α−1)δ − e],   ∂L/∂x (direct) = −w·δ.
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..kernels import global_mean, resolve_backend
from ..space import append_dims
from .divergences import get_divergence, h_derivatives
from .f_distill import RatioWeights
from .losses import EncoderDiscriminator, StepContext
from .options import (Divergence, DivergenceOptions, EncoderGANSection, KarrasIndexSigma, KernelOptions, RatioSection,
                      check_divergence_name)
from .score_difference import ScoreDifferenceMethod, ScoreDifferenceOptions

WEIGHTINGS = ("sid", "exact", "none")


# -------------------------------------------------------------------------------------------------
# The SiD-type term with a fused, closed-form backward
# -------------------------------------------------------------------------------------------------
def _sid_forward(x, a, b, alpha, scale):
    """Per-sample scale·[(1−α)‖δ‖² + δ·e] with δ = a − b, e = b − x; alpha, scale: [B]."""
    delta, e = (a - b).flatten(1), (b - x).flatten(1)
    return scale * ((1 - alpha) * delta.pow(2).sum(1) + (delta * e).sum(1))


def _sid_backward(x, a, b, alpha, scale, grad_out):
    """(∂/∂x, ∂/∂a, ∂/∂b) of Σ_i grad_out_i·L_i, closed form; non-finite entries become 0 (SiD's nan_to_num)."""
    k = append_dims(grad_out * scale, x.ndim)
    al = append_dims(alpha, x.ndim)
    delta, e = a - b, b - x
    grad_a = k * (2 * (1 - al) * delta + e)
    grad_b = k * ((2 * al - 1) * delta - e)
    grad_x = -k * delta
    return tuple(torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in (grad_x, grad_a, grad_b))


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


class _FusedSiD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, alpha, scale, compiled: bool):
        ctx.save_for_backward(x, a, b, alpha, scale)
        ctx.compiled = compiled
        return (_compiled(_sid_forward) if compiled else _sid_forward)(x, a, b, alpha, scale)

    @staticmethod
    def backward(ctx, grad_out):
        x, a, b, alpha, scale = ctx.saved_tensors
        fn = _compiled(_sid_backward) if ctx.compiled else _sid_backward
        gx, ga, gb = fn(x, a, b, alpha, scale, grad_out)
        return gx, ga, gb, None, None, None


def sid_per_sample(x, a, b, alpha, scale, fused: bool = True, backend: str = "eager") -> torch.Tensor:
    """scale_i·[(1−α_i)‖a_i − b_i‖² + (a_i − b_i)·(b_i − x_i)] per sample, differentiable in x, a and b.

    ``fused``: autograd.Function with the closed-form backward (compiled with ``backend="compile"``);
    otherwise plain autograd (the reference). ``alpha`` and ``scale`` are floats or [B] tensors (no gradient).
    """
    batch = x.shape[0]
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
    alpha = torch.as_tensor(alpha, dtype=dtype, device=x.device).expand(batch).detach()
    scale = torch.as_tensor(scale, dtype=dtype, device=x.device).expand(batch).detach()
    if not fused:
        return _sid_forward(x, a, b, alpha, scale)
    # SiD's closed-form backward has no hand-written kernel: the triton backend compiles it as compile does
    compiled = resolve_backend(backend, x.device) in ("compile", "triton")
    return _FusedSiD.apply(x, a, b, alpha.contiguous(), scale.contiguous(), compiled)


def sample_weight(ctx: StepContext, weighting: str, residual_floor: float = 1e-5) -> torch.Tensor:
    """Per-sample w, divided by the number of elements so losses are means like the surrogate's.

    sid: 1/c with c = mean|x − Dᵀ| (SiD's normaliser, clipped at 1e-5); exact: 1/σ⁴ (the gradient of J_σ exactly);
    none: 1.
    """
    x = ctx.x.detach()
    numel = x[0].numel()
    if weighting == "sid":
        c = (x - ctx.d_teacher.detach()).abs().flatten(1).mean(1).clamp_min(residual_floor)
        w = 1 / c
    elif weighting == "exact":
        w = 1 / ctx.sigma.to(torch.promote_types(ctx.sigma.dtype, torch.float32)) ** 4
    elif weighting == "none":
        w = torch.ones(x.shape[0], device=x.device)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    return w.to(torch.promote_types(x.dtype, torch.float32)) / numel


def _masked_mean(per_sample: torch.Tensor, metrics: dict) -> torch.Tensor:
    """Mean over finite samples; the others are dropped and counted (SiD masks NaN samples the same way)."""
    finite = torch.isfinite(per_sample.detach())
    metrics["nonfinite_samples"] = int((~finite).sum())
    if not finite.any():
        return per_sample.sum()  # all bad: let the trainer's NaN guard stop with the step number
    return torch.where(finite, per_sample, torch.zeros_like(per_sample)).sum() / finite.sum()


# -------------------------------------------------------------------------------------------------
# Options and methods
# -------------------------------------------------------------------------------------------------
class ScoreIdentityOptions(ScoreDifferenceOptions, KernelOptions):
    weighting: Literal["sid", "exact", "none"] = "sid"   # sid (1/mean|x − Dᵀ|) | exact (1/σ⁴) | none
    fused_backward: bool = True        # closed-form backward (compiled with kernel_backend=compile)


class SiDOptions(ScoreIdentityOptions):
    name: Literal["sid"] = "sid"
    alpha: float = Field(1.2, gt=0)    # SiD's α (1.2 default; 1.0 for AFHQ); α = ½ is the exact Fisher gradient


class SiDAOptions(SiDOptions):
    name: Literal["sida"] = "sida"
    gan: EncoderGANSection = Field(default_factory=EncoderGANSection)


class SiD(ScoreDifferenceMethod):
    """SiD: the loss through x_σ with teacher and fake weights frozen, input gradients on; 1:1 updates, σ_init 2.5,
    σ from Karras' grid over t ∈ [0, 0.8] (σ ≤ 24.4)."""

    name = "sid"
    Options = SiDOptions
    default_sigma_init = 2.5
    default_sigma_generator = KarrasIndexSigma(min_index=0, max_index=799, num_points=1000)

    def per_sample_loss(self, ctx: StepContext, step: int, metrics: dict) -> torch.Tensor:
        w = sample_weight(ctx, self.options.weighting)
        return sid_per_sample(ctx.x, ctx.d_teacher, ctx.d_fake, self.options.alpha, w, self.options.fused_backward,
                              self.options.kernel_backend)

    def generator_loss(self, nets, x, cond, draws):
        return self.loss_from_context(self.step_context(nets, x, cond, draws, input_grad=True), draws.step)

    def loss_from_context(self, ctx: StepContext, step: int = 0):
        metrics: dict = {}
        loss = _masked_mean(self.per_sample_loss(ctx, step, metrics), metrics)
        metrics["distill_loss"] = float(loss.detach())  # with α ≥ 1 it can be negative: not a convergence measure
        return self.add_gan_term(loss, ctx, metrics), metrics


class SiDA(SiD):
    """SiDA: SiD + a GAN term, the discriminator on the fake network's encoder (no extra parameters) or a head."""

    name = "sida"
    Options = SiDAOptions
    uses_discriminator = True

    def discriminator_head(self, factory, on, layers: str):
        if self.options.gan.discriminator == "encoder":  # on the fake bottleneck (EncoderGANSection checks it)
            return EncoderDiscriminator()
        return super().discriminator_head(factory, on, layers)


class UniInstructOptions(ScoreIdentityOptions, DivergenceOptions):  # α is per sample (α*), not an option
    name: Literal["uni_instruct"] = "uni_instruct"
    gan: EncoderGANSection = Field(default_factory=EncoderGANSection)
    divergence: Divergence = "forward_kl"
    ratio: RatioSection = Field(default_factory=lambda: RatioSection(sigma_bins=0))  # σ-bin normalisation off
    # [[step, divergence], ...]: e.g. [[0, reverse_kl], [3000, forward_kl]] is the paper's RKL → FKL warm start
    divergence_schedule: list[tuple[int, str]] = Field(default_factory=list)

    @field_validator("divergence_schedule")
    @classmethod
    def _schedule(cls, value):
        for step, div in value:
            if step < 0:
                raise ValueError(f"schedule steps must be ≥ 0, got {step}")
            check_divergence_name(div)
        return value

    @model_validator(mode="after")
    def _schedule_h_finite(self):
        for i, (_, div) in enumerate(self.divergence_schedule):
            try:
                self.ratio.check_divergence(div)
            except ValueError as e:
                raise ValueError(f"divergence_schedule[{i}]: {e}") from None
        return self


class UniInstruct(RatioWeights, SiDA):
    """Uni-Instruct: the gradient of J_σ = E_q[h(r)‖s_p − s_q‖²] for any f, as a SiD-type term with per-sample
    α* = ½ + rh'/(2h) and weight 2h, plus a Diff-Instruct-type term through r (∇_x r = r(s_p − s_q))."""

    name = "uni_instruct"
    Options = UniInstructOptions

    def __init__(self, options=None, **kw):
        super().__init__(options, **kw)
        self.init_ratio()
        self._schedule = sorted((int(s), get_divergence(d)) for s, d in self.options.divergence_schedule)

    def divergence_at(self, step: int):
        current = self.divergence
        for start, div in self._schedule:
            if step >= start:
                current = div
        return current

    @property
    def label(self) -> str:
        if self._schedule:
            return f"{self.name} ({' → '.join(d.name for _, d in self._schedule)})"
        return f"{self.name} ({self.divergence.name})"

    def per_sample_loss(self, ctx: StepContext, step: int, metrics: dict) -> torch.Tensor:
        o = self.options
        r = self.ratio(ctx).to(torch.float64)
        h, rh1, r2h2 = h_derivatives(self.divergence_at(step), r)   # h, r·h', r²·h''
        if o.normalize_weights:
            mean_h = global_mean(h).clamp_min(1e-30)  # a per-step rescale of both parts, across processes
            h, rh1, r2h2 = h / mean_h, rh1 / mean_h, r2h2 / mean_h
        dtype = torch.promote_types(ctx.x.dtype, torch.float32)
        w = sample_weight(ctx, o.weighting)
        alpha_star = (0.5 + rh1 / (2 * h)).to(dtype)
        sid_part = sid_per_sample(ctx.x, ctx.d_teacher, ctx.d_fake, alpha_star, (2 * h).to(dtype) * w,
                                  o.fused_backward, o.kernel_backend)
        # Diff-Instruct-type part: the ratio's path, ∇_x r = r·δ/σ², as a pseudo-gradient on x (x_σ − x is fixed noise)
        delta = (ctx.d_teacher - ctx.d_fake).detach().to(dtype)
        e = (ctx.d_fake - ctx.x).detach().to(dtype)
        sq, de = delta.flatten(1).pow(2).sum(1), (delta * e).flatten(1).sum(1)
        omega = (-r2h2).to(dtype) * sq + (2 * rh1).to(dtype) * de
        sigma2 = append_dims(ctx.sigma.to(dtype) ** 2, delta.ndim)
        g = append_dims(omega * w, delta.ndim) * delta / sigma2
        di_part = (ctx.x.to(dtype) * g).flatten(1).sum(1)
        metrics["ratio_mean"] = float(r.mean())
        metrics["alpha_star_mean"] = float(alpha_star.mean())
        return sid_part + di_part


__all__ = ["SiD", "SiDA", "UniInstruct", "sid_per_sample", "sample_weight"]
