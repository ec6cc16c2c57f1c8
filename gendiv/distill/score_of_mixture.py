"""Score-of-Mixture training (SMT, from data alone) and distillation (SMD, with a teacher) (docs/methods.md §3).

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

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..condition import Condition
from ..kernels import weighted_difference
from ..space import append_dims
from .losses import StepContext, score_difference_step, surrogate_loss, weighted_denoising_error
from .options import GANSection, KernelOptions
from .score_difference import FAKE, ScoreDifferenceMethod, ScoreDifferenceOptions

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
    """Per sample α·λ(σ)·mean(f(x̃_real) − x_real)² + (1−α)·λ(σ)·mean(f(x̃_fake) − x_fake)² (docs/methods.md §3).

    Its minimiser is the mixture denoiser E_{αp_σ + (1−α)q_σ}[x₀ | x_σ]; α = 0 or 1 just drops one term.
    """
    a = alpha.float()
    sigma = sigma.float()
    return a * weighted_denoising_error(d_real, x_real, sigma) + (1 - a) * weighted_denoising_error(d_fake, x_fake, sigma)


def smt_pseudo_gradient(x: torch.Tensor, f0: torch.Tensor, f_alpha: torch.Tensor, f1: torch.Tensor,
                        alpha: torch.Tensor | None = None, adaptive: bool = True, tiny: float = 1e-20) -> torch.Tensor:
    """SMT's generator step on x (docs/methods.md §3), with p_a = x − f(x_σ; a):

        adaptive (as implemented):  g = (p_α − p_0) / [ mean|p_1| · rms(p_α − p_0)/rms(p_1 − p_0) ]
        plain (Prop. 3.1):          g = (p_α − p_0)/α = σ²·(s_0 − s_α)/α

    The adaptive form points along (s_0 − s_α) with the magnitude of DMD's step; at α = 1 it is DMD's g exactly,
    at any scale of p_1 − p_0: ``tiny`` only guards 0/0. (SMT's code adds 1e-6 under the square root instead, which
    makes the step 1.42× DMD's at rms(p_1 − p_0) = 1e-3 and 10× at 1e-4, i.e. near convergence and at small σ.)
    """
    p0, pa, p1 = x - f0, x - f_alpha, x - f1
    if not adaptive:
        return (pa - p0) / append_dims(alpha.to(x.dtype), x.ndim)
    diff, ref = (pa - p0).flatten(1), (p1 - p0).flatten(1)
    ratio = diff.pow(2).mean(1).sqrt() / ref.pow(2).mean(1).sqrt().clamp_min(tiny)
    scale = p1.abs().flatten(1).mean(1) * ratio
    return torch.nan_to_num((pa - p0) / append_dims(scale, x.ndim))


def mixture_weight(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """D = sigmoid(ℓ + log(α/(1−α))), exactly 0 at α = 0 and 1 at α = 1 (no log 0 is ever formed)."""
    a = alpha.to(logits.dtype)
    inner = torch.where((a > 0) & (a < 1), logits + torch.log(a.clamp_min(1e-30)) - torch.log1p(-a.clamp_max(1 - 1e-7)),
                        torch.zeros_like(logits))
    return torch.where(a <= 0, torch.zeros_like(logits), torch.where(a >= 1, torch.ones_like(logits), torch.sigmoid(inner)))


# -------------------------------------------------------------------------------------------------
class AlphaOptions(BaseModel):
    alpha_points: int = Field(1000, ge=2)              # α grid {k/alpha_points}
    alpha_zero_mass: float = Field(0.25, ge=0, le=1)   # score network: extra probability of α = 0 (the paper's 25%)


class SMTOptions(ScoreDifferenceOptions, AlphaOptions):
    name: Literal["smt"] = "smt"
    fake_updates_per_generator_update: int = Field(5, ge=1)
    generator_alpha_min: float = Field(0.001, gt=0, le=1)  # generator α ∈ [this, 1]: no α = 0 (1/α)
    adaptive_weight: bool = True        # SMT's adaptive weighting (as its code); false: the plain (1/α)(s_0 − s_α)


class SMDOptions(ScoreDifferenceOptions, AlphaOptions, KernelOptions):
    name: Literal["smd"] = "smd"
    fake_updates_per_generator_update: int = Field(5, ge=1)
    generator_alpha_min: float = Field(0.5, gt=0, le=1)    # SMD's generator α ∈ [½, 1]
    gan: GANSection = Field(default_factory=GANSection)


class _AlphaSampling:
    def score_alpha(self, batch: int, rng, device) -> torch.Tensor:
        o = self.options
        return sample_alpha(batch, rng, o.alpha_points, 0, o.alpha_zero_mass, device)

    def generator_alpha(self, batch: int, rng, device) -> torch.Tensor:
        o = self.options
        low = max(1, round(o.generator_alpha_min * o.alpha_points))
        return sample_alpha(batch, rng, o.alpha_points, low, 0.0, device)


class SMT(_AlphaSampling, ScoreDifferenceMethod):
    """Score-of-Mixture Training: a one-step generator from data alone (no teacher), with one amortized network
    f(x_σ, σ, α) in the fake score's place (its optimiser: ``optim.lr_fake``). With a network teacher and
    ``student.init_from_teacher``, the amortized network starts as the teacher with a zero-initialised α path."""

    name = "smt"
    Options = SMTOptions
    needs_teacher = False

    def networks(self, factory):
        net = factory.score_network(scalar=ALPHA)
        names = list(getattr(net.config, "scalar_names", None) or [])
        if ALPHA not in names:
            raise ValueError(f"SMT's amortized network needs an α condition (scalar_names contains {ALPHA!r}); "
                             f"got {type(net).__name__} with scalar_names={names}")
        return {FAKE: net}

    def fake_loss(self, nets, x_fake, cond, draws):
        bs, net = x_fake.shape[0], nets[FAKE]
        sigma = draws.sigma("fake", bs)
        alpha = self.score_alpha(bs, draws.rng, x_fake.device)
        x_real, real_cond = draws.real(bs)
        noise_fake, noise_real = draws.randn_like(x_fake), draws.randn_like(x_fake)
        s = append_dims(sigma, x_fake.ndim)
        both = torch.cat([x_real + s * noise_real, x_fake + s * noise_fake])
        conds = None if cond is None else Condition.cat([real_cond, cond])
        out = net(both, torch.cat([sigma, sigma]), alpha_condition(conds, torch.cat([alpha, alpha])))
        loss = mixture_denoising_loss(out[:bs], x_real, out[bs:], x_fake, sigma, alpha).mean()
        return loss, {"fake_loss": float(loss.detach()), "alpha_mean": float(alpha.mean())}

    def generator_loss(self, nets, x, cond, draws):
        net, bs = nets[FAKE], x.shape[0]
        sigma = draws.sigma("generator", bs)
        alpha = self.generator_alpha(bs, draws.rng, x.device)
        x_sigma = x + append_dims(sigma, x.ndim) * draws.randn_like(x)
        alphas = torch.cat([torch.zeros_like(alpha), alpha, torch.ones_like(alpha)])
        cond3 = None if cond is None else Condition.cat([cond] * 3)
        with torch.no_grad():  # one pass for f(·; 0), f(·; α), f(·; 1)
            out = net(torch.cat([x_sigma.detach()] * 3), torch.cat([sigma] * 3), alpha_condition(cond3, alphas))
        f0, fa, f1 = out.float().chunk(3)
        g = smt_pseudo_gradient(x.detach().float(), f0, fa, f1, alpha, self.options.adaptive_weight)
        loss = surrogate_loss(x, g)
        return loss, {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}


class SMD(_AlphaSampling, ScoreDifferenceMethod):
    """Score-of-Mixture Distillation: teacher + fake score + a discriminator head ℓ (on the fake network's
    bottleneck by default, ``gan.features`` / ``gan.layers``); the mixture denoiser is D·Dᵀ + (1−D)·Dᶠ,
    D = sigmoid(ℓ + logit α); student step g = D·(Dᶠ − Dᵀ)/(α·mean|x − Dᵀ|) plus the GAN term softplus(−(ℓ + logit α))."""

    name = "smd"
    Options = SMDOptions
    uses_discriminator = True

    def fake_loss(self, nets, x_fake, cond, draws):
        """Fake score: DSM on student samples; ℓ: the mixture loss of the interpolated denoiser, with the
        (detached) teacher and fake denoisings as targets (lower variance than x₀, the same minimiser)."""
        bs = x_fake.shape[0]
        fake, head = nets[FAKE], nets["discriminator"]
        sigma = draws.sigma("fake", bs)
        alpha = self.score_alpha(bs, draws.rng, x_fake.device)
        x_real, real_cond = draws.real(bs)
        noise = draws.randn_like(x_fake)  # real and fake share the noise, as SMD's code does
        s = append_dims(sigma, x_fake.ndim)
        x_in = torch.cat([x_fake + s * noise, x_real + s * noise])
        all_cond = None if cond is None else Condition.cat([cond, real_cond])
        features = self.gan_features
        if features.network is None:  # the head on the fake network's features: one pass
            d_fake, feats = fake(x_in, torch.cat([sigma, sigma]), all_cond, return_features=features.layers)
        else:
            d_fake = fake(x_in, torch.cat([sigma, sigma]), all_cond)
            feats = features.of_frozen(x_in, torch.cat([sigma, sigma]), all_cond, grad=False)
        logits = head(feats)
        with torch.no_grad():
            d_teacher = draws.teacher(x_in, torch.cat([sigma, sigma]), all_cond)
        dsm = weighted_denoising_error(d_fake[:bs], x_fake, sigma).mean()
        weight = mixture_weight(logits, torch.cat([alpha, alpha]))
        interp = append_dims(weight, x_fake.ndim) * d_teacher.float() \
            + append_dims(1 - weight, x_fake.ndim) * d_fake.detach().float()
        mix = mixture_denoising_loss(interp[bs:], d_teacher[bs:], interp[:bs], d_fake[:bs].detach(), sigma, alpha).mean()
        loss = dsm + self.options.gan.weight_disc * mix
        return loss, {"fake_loss": float(dsm.detach()), "disc_loss": float(mix.detach())}

    def generator_loss(self, nets, x, cond, draws):
        bs = x.shape[0]
        sigma = draws.sigma("generator", bs)
        alpha = self.generator_alpha(bs, draws.rng, x.device)
        ctx = score_difference_step(x, draws.teacher, nets[FAKE], sigma, cond, discriminator=nets["discriminator"],
                                    gan_grad=self.options.gan.weight_gen > 0, generator=draws.rng,
                                    features=self.gan_features)
        return self.mixture_loss(ctx, alpha)

    def mixture_loss(self, ctx: StepContext, alpha: torch.Tensor):
        weight = mixture_weight(ctx.logits.detach().float(), alpha) / alpha.float()
        g = weighted_difference(ctx.x.detach(), ctx.d_teacher, ctx.d_fake, weight, normalize=True,
                                backend=self.options.kernel_backend)
        loss = surrogate_loss(ctx.x, g)
        metrics = {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}
        gan_weight = self.options.gan.weight_gen
        if gan_weight > 0 and ctx.logits.requires_grad:
            a = alpha.to(ctx.logits.dtype)
            shifted = ctx.logits + torch.log(a) - torch.log1p(-a.clamp_max(1 - 1e-7))
            gan = torch.where(a >= 1, torch.zeros_like(shifted), F.softplus(-shifted)).mean()
            metrics["gan_gen_loss"] = float(gan.detach())
            loss = loss + gan_weight * gan
        return loss, metrics


__all__ = ["SMT", "SMD", "alpha_condition", "sample_alpha", "mixture_denoising_loss", "smt_pseudo_gradient",
           "mixture_weight"]
