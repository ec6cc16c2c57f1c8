"""Score-of-Mixture training (SMT, from data alone) and distillation (SMD, with a teacher) (methods.md §3).

The α-skew Jensen–Shannon divergence D^(α)(q‖p) = (1/α)KL(q‖m_α) + (1/(1−α))KL(p‖m_α), m_α = αp + (1−α)q, has
the generator gradient (1/α)·E[∇_θ G ᵀ (s_0 − s_α)] with s_α = ∇ log m_α (α = 1: the DMD/Diff-Instruct gradient).

SMT learns every mixture denoiser with one amortized network f(x_σ, σ, α) (α a scalar condition, entering as
c_α = α − ½ like a second time embedding), trained on real and generated samples with

    α·λ(σ)‖f(x_real + σn; α) − x_real‖² + (1−α)·λ(σ)‖f(x_fake + σn'; α) − x_fake‖².

SMD keeps the teacher and a fake score and reads the mixture from a discriminator: with D = sigmoid(ℓ + logit α),
the mixture denoiser is D·Dᵀ + (1−D)·Dᶠ (Prop. A.2 in denoiser form, f = x + σ²s being affine in s).
α ∈ {0, 1} is handled exactly: the loss weights vanish and logit(α) = ±∞ makes D exactly 0 or 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..condition import Condition
from ..kernels import weighted_difference
from ..space import append_dims
from .denoising import weighted_denoising_error
from .distill import (DistillationMethod, DistillBatch, DMD2Options, MethodOptions, StepContext, score_difference_step,
                      surrogate_loss)

ALPHA = "alpha"  # the scalar condition's name in the amortized network


def alpha_condition(cond: Condition | None, alpha: torch.Tensor) -> Condition:
    """The amortized network's condition: the labels of ``cond`` plus c_α = α − ½ (as SMT's code embeds it)."""
    scalars = {} if cond is None else dict(cond.scalars)
    scalars[ALPHA] = alpha.float() - 0.5
    if cond is None:
        return Condition(scalars=scalars)
    return Condition(class_labels=cond.class_labels, drop=cond.drop, scalars=scalars, text_embeds=cond.text_embeds)


def sample_alpha(batch: int, generator=None, points: int = 1000, low: int = 0, zero_mass: float = 0.0,
                 device=None) -> torch.Tensor:
    """α on the grid {k/points}, k uniform in [low, points]; with probability ``zero_mass`` α = 0 exactly.

    Score network: low = 0, zero_mass 0.25 (the paper); SMT generator: low = 1 (no α = 0); SMD generator: [½, 1].
    """
    k = torch.randint(low, points + 1, (batch,), generator=generator)
    alpha = k.double() / points
    if zero_mass > 0:
        alpha = torch.where(torch.rand(batch, generator=generator, dtype=torch.float64) < zero_mass,
                            torch.zeros_like(alpha), alpha)
    return alpha.float().to(device)


def mixture_denoising_loss(d_real: torch.Tensor, x_real: torch.Tensor, d_fake: torch.Tensor, x_fake: torch.Tensor,
                           sigma: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per sample α·λ(σ)·mean(f(x̃_real) − x_real)² + (1−α)·λ(σ)·mean(f(x̃_fake) − x_fake)² (methods.md §3).

    Its minimiser is the mixture denoiser E_{αp_σ + (1−α)q_σ}[x₀ | x_σ]; α = 0 or 1 just drops one term.
    """
    a = alpha.float()
    sigma = sigma.float()
    return a * weighted_denoising_error(d_real, x_real, sigma) + (1 - a) * weighted_denoising_error(d_fake, x_fake, sigma)


def smt_pseudo_gradient(x: torch.Tensor, f0: torch.Tensor, f_alpha: torch.Tensor, f1: torch.Tensor,
                        alpha: torch.Tensor | None = None, adaptive: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """SMT's generator step on x (methods.md §3), with p_a = x − f(x_σ; a):

        adaptive (as implemented):  g = (p_α − p_0) / [ mean|p_1| · rms(p_α − p_0)/rms(p_1 − p_0) ]
        plain (Prop. 3.1):          g = (p_α − p_0)/α = σ²·(s_0 − s_α)/α

    The adaptive form points along (s_0 − s_α) with the magnitude of DMD's step; at α = 1 it is DMD's g exactly.
    """
    p0, pa, p1 = x - f0, x - f_alpha, x - f1
    if not adaptive:
        return (pa - p0) / append_dims(alpha.to(x.dtype), x.ndim)
    diff, ref = (pa - p0).flatten(1), (p1 - p0).flatten(1)
    ratio = diff.pow(2).mean(1).sqrt() / (ref.pow(2).mean(1) + eps).sqrt()
    scale = p1.abs().flatten(1).mean(1) * ratio
    return torch.nan_to_num((pa - p0) / append_dims(scale, x.ndim))


def mixture_weight(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """D = sigmoid(ℓ + log(α/(1−α))), exactly 0 at α = 0 and 1 at α = 1 (no log 0 is ever formed)."""
    a = alpha.to(logits.dtype)
    inner = torch.where((a > 0) & (a < 1), logits + torch.log(a.clamp_min(1e-30)) - torch.log1p(-a.clamp_max(1 - 1e-7)),
                        torch.zeros_like(logits))
    return torch.where(a <= 0, torch.zeros_like(logits), torch.where(a >= 1, torch.ones_like(logits), torch.sigmoid(inner)))


# -------------------------------------------------------------------------------------------------
@dataclass
class AlphaOptions:
    alpha_points: int = 1000           # α grid {k/alpha_points}
    alpha_zero_mass: float = 0.25      # score network: extra probability of α = 0 (the paper's 25%)

    def validate_alpha(self, generator_low: float):
        if self.alpha_points < 2:
            raise ValueError(f"method.alpha_points must be ≥ 2, got {self.alpha_points}")
        if not 0 <= self.alpha_zero_mass <= 1:
            raise ValueError(f"method.alpha_zero_mass must be in [0, 1], got {self.alpha_zero_mass}")
        if not 0 < generator_low <= 1:
            raise ValueError(f"method.generator_alpha_min must be in (0, 1], got {generator_low}")


@dataclass
class SMTOptions(MethodOptions, AlphaOptions):
    generator_alpha_min: float = 0.001  # generator α ∈ [this, 1]: no α = 0 (1/α)
    adaptive_weight: bool = True        # SMT's adaptive weighting (as its code); false: the plain (1/α)(s_0 − s_α)

    def validate(self):
        super().validate()
        self.validate_alpha(self.generator_alpha_min)


@dataclass
class SMDOptions(DMD2Options, AlphaOptions):
    generator_alpha_min: float = 0.5    # SMD's generator α ∈ [½, 1]
    discriminator: str = "head"         # SMD reads the mixture from a discriminator: required
    regression_weight: float = 0.0

    def validate(self):
        super().validate()
        self.validate_alpha(self.generator_alpha_min)
        if self.discriminator != "head":
            raise ValueError(f"method.discriminator: SMD needs a discriminator head (it gives D = sigmoid(ℓ + logit α)), "
                             f"got {self.discriminator!r}")


class _AlphaSampling:
    def score_alpha(self, batch: int, rng, device) -> torch.Tensor:
        o = self.options
        return sample_alpha(batch, rng, o.alpha_points, 0, o.alpha_zero_mass, device)

    def generator_alpha(self, batch: int, rng, device) -> torch.Tensor:
        o = self.options
        low = max(1, round(o.generator_alpha_min * o.alpha_points))
        return sample_alpha(batch, rng, o.alpha_points, low, 0.0, device)


class SMT(_AlphaSampling, DistillationMethod):
    """Score-of-Mixture Training: a one-step generator from data alone (no teacher), with one amortized network
    f(x_σ, σ, α) in the fake score's place (its optimiser: ``optim.lr_fake``). With a network teacher and
    ``student.init_from_teacher``, the amortized network starts as the teacher with a zero-initialised α path."""

    name = "smt"
    Options = SMTOptions
    needs_teacher = False
    default_fake_updates = 5

    def build_auxiliaries(self, factory):
        net = factory.score_network(scalar=ALPHA)
        names = list(getattr(net.config, "scalar_names", None) or [])
        if ALPHA not in names:
            raise ValueError(f"SMT's amortized network needs an α condition (scalar_names contains {ALPHA!r}); "
                             f"got {type(net).__name__} with scalar_names={names}")
        return {"fake": net}

    def auxiliary_loss(self, nets, batch: DistillBatch):
        x_fake, cond, bs = batch.x, batch.cond, batch.x.shape[0]
        net = nets["fake"]
        sigma = batch.draw_sigma("fake", bs)
        alpha = self.score_alpha(bs, batch.rng, x_fake.device)
        x_real, real_cond = batch.draw_real(bs)
        noise_fake, noise_real = batch.randn_like(x_fake), batch.randn_like(x_fake)
        s = append_dims(sigma, x_fake.ndim)
        both = torch.cat([x_real + s * noise_real, x_fake + s * noise_fake])
        conds = None if cond is None else Condition.cat([real_cond, cond])
        out = net(both, torch.cat([sigma, sigma]), alpha_condition(conds, torch.cat([alpha, alpha])))
        loss = mixture_denoising_loss(out[:bs], x_real, out[bs:], x_fake, sigma, alpha).mean()
        return loss, {"fake_loss": float(loss.detach()), "alpha_mean": float(alpha.mean())}

    def generator_loss(self, ctx_or_nets, batch: DistillBatch | None = None):
        if batch is None:
            raise ValueError("SMT's generator loss needs the amortized network: call it through the trainer")
        net, x, bs = ctx_or_nets["fake"], batch.x, batch.x.shape[0]
        sigma = batch.draw_sigma("generator", bs)
        alpha = self.generator_alpha(bs, batch.rng, x.device)
        x_sigma = x + append_dims(sigma, x.ndim) * batch.randn_like(x)
        alphas = torch.cat([torch.zeros_like(alpha), alpha, torch.ones_like(alpha)])
        cond3 = None if batch.cond is None else Condition.cat([batch.cond] * 3)
        with torch.no_grad():  # one pass for f(·; 0), f(·; α), f(·; 1)
            out = net(torch.cat([x_sigma.detach()] * 3), torch.cat([sigma] * 3), alpha_condition(cond3, alphas))
        f0, fa, f1 = out.float().chunk(3)
        g = smt_pseudo_gradient(x.detach().float(), f0, fa, f1, alpha, self.options.adaptive_weight)
        loss = surrogate_loss(x, g)
        return loss, {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}


class SMD(_AlphaSampling, DistillationMethod):
    """Score-of-Mixture Distillation: teacher + fake score + a discriminator head ℓ on the fake network's
    bottleneck; the mixture denoiser is D·Dᵀ + (1−D)·Dᶠ, D = sigmoid(ℓ + logit α); generator step
    g = D·(Dᶠ − Dᵀ)/(α·mean|x − Dᵀ|) plus the GAN term softplus(−(ℓ + logit α))."""

    name = "smd"
    Options = SMDOptions
    uses_discriminator = True
    default_fake_updates = 5

    def auxiliary_loss(self, nets, batch: DistillBatch):
        """Fake score: DSM on generated samples; ℓ: the mixture loss of the interpolated denoiser, with the
        (detached) teacher and fake denoisings as targets (lower variance than x₀, the same minimiser)."""
        x_fake, cond, bs = batch.x, batch.cond, batch.x.shape[0]
        fake, head = nets["fake"], nets["discriminator"]
        sigma = batch.draw_sigma("fake", bs)
        alpha = self.score_alpha(bs, batch.rng, x_fake.device)
        x_real, real_cond = batch.draw_real(bs)
        noise = batch.randn_like(x_fake)  # real and fake share the noise, as SMD's code does
        s = append_dims(sigma, x_fake.ndim)
        x_in = torch.cat([x_fake + s * noise, x_real + s * noise])
        all_cond = None if cond is None else Condition.cat([cond, real_cond])
        d_fake, feats = fake(x_in, torch.cat([sigma, sigma]), all_cond, return_features=True)
        logits = head(feats)
        with torch.no_grad():
            d_teacher = batch.teacher(x_in, torch.cat([sigma, sigma]), all_cond)
        dsm = weighted_denoising_error(d_fake[:bs], x_fake, sigma).mean()
        weight = mixture_weight(logits, torch.cat([alpha, alpha]))
        interp = append_dims(weight, x_fake.ndim) * d_teacher.float() + append_dims(1 - weight, x_fake.ndim) * d_fake.detach().float()
        mix = mixture_denoising_loss(interp[bs:], d_teacher[bs:], interp[:bs], d_fake[:bs].detach(), sigma, alpha).mean()
        loss = dsm + self.options.gan_weight_disc * mix
        return loss, {"fake_loss": float(dsm.detach()), "disc_loss": float(mix.detach())}

    def generator_loss(self, ctx_or_nets, batch: DistillBatch | None = None):
        if batch is None:
            raise ValueError("SMD's generator loss needs the trainer's batch (it draws α)")
        nets, x, bs = ctx_or_nets, batch.x, batch.x.shape[0]
        sigma = batch.draw_sigma("generator", bs)
        alpha = self.generator_alpha(bs, batch.rng, x.device)
        ctx = score_difference_step(x, batch.teacher, nets["fake"], sigma, batch.cond, discriminator=nets["discriminator"],
                                    gan_grad=self.options.gan_weight_gen > 0, generator=batch.rng)
        return self.loss_from_context(ctx, alpha)

    def loss_from_context(self, ctx: StepContext, alpha: torch.Tensor):
        weight = mixture_weight(ctx.logits.detach().float(), alpha) / alpha.float()
        g = weighted_difference(ctx.x.detach(), ctx.d_teacher, ctx.d_fake, weight, normalize=True,
                                backend=self.options.kernel_backend)
        loss = surrogate_loss(ctx.x, g)
        metrics = {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}
        if self.options.gan_weight_gen > 0 and ctx.logits.requires_grad:
            a = alpha.to(ctx.logits.dtype)
            shifted = ctx.logits + torch.log(a) - torch.log1p(-a.clamp_max(1 - 1e-7))
            gan = torch.where(a >= 1, torch.zeros_like(shifted), F.softplus(-shifted)).mean()
            metrics["gan_gen_loss"] = float(gan.detach())
            loss = loss + self.options.gan_weight_gen * gan
        return loss, metrics


__all__ = ["SMT", "SMD", "alpha_condition", "sample_alpha", "mixture_denoising_loss", "smt_pseudo_gradient",
           "mixture_weight"]
