"""One-step distillation: the shared score-difference step and the methods as weightings on it (methods.md §1–2).

Per generator step:  x = G(z)  →  x_σ = x + σn  →  Dᵀ(x_σ) (guided, no grad), Dᶠ(x_σ) (no grad, or with input
gradient for the GAN term), discriminator logits ℓ(x_σ)  →  per-sample weight w  →  kernel
g = w·(Dᶠ − Dᵀ)/c  →  surrogate ½‖x − sg(x − g)‖² (+ GAN term). A method only chooses w, c and the GAN term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..condition import Condition
from ..kernels import SigmaBinNormalizer, batch_normalized, density_ratio, weighted_difference
from ..models.discriminator import generator_gan_loss
from ..space import append_dims
from .divergences import get_divergence


@dataclass
class StepContext:
    """Everything a method may weigh, evaluated once per generator step."""

    x: torch.Tensor                      # generator samples (carry the generator's graph)
    sigma: torch.Tensor                  # [B]
    x_sigma: torch.Tensor                # x + σ·n
    cond: Condition | None
    d_teacher: torch.Tensor              # Dᵀ(x_σ), no grad
    d_fake: torch.Tensor                 # Dᶠ(x_σ), no grad
    logits: torch.Tensor | None = None   # discriminator logits at x_σ (graph to x when the GAN term is on)


def surrogate_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½·mean((x − sg(x − g))²): ∂L/∂x = g/numel(x), and no gradient reaches teacher or fake networks."""
    return 0.5 * torch.nn.functional.mse_loss(x.float(), (x.detach().float() - g.float()))


def score_difference_step(x, teacher, fake, sigma, cond=None, discriminator=None, gan_grad: bool = False,
                          generator=None) -> StepContext:
    """Noise generator samples and evaluate teacher, fake score and (optionally) discriminator at the same x_σ.

    ``teacher`` may be a guided denoiser (ClassifierFreeGuidance); ``discriminator`` is a head on the fake
    network's bottleneck features. With ``gan_grad`` the fake pass keeps the graph from x_σ to the logits (the
    fake network's weights are not updated by the generator step: the trainer only steps the generator).
    """
    if x.shape[0] != sigma.shape[0]:
        raise ValueError(f"sigma must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device) if generator is not None \
        else torch.randn_like(x, dtype=torch.float32)
    x_sigma = x + append_dims(sigma, x.ndim) * noise
    with torch.no_grad():
        d_teacher = teacher(x_sigma.detach(), sigma, cond)
    if d_teacher.shape != x.shape:
        raise ValueError(f"teacher output shape {tuple(d_teacher.shape)} does not match generator output {tuple(x.shape)}")
    logits = None
    if discriminator is None:
        with torch.no_grad():
            d_fake = fake(x_sigma.detach(), sigma, cond)
    else:
        with torch.set_grad_enabled(gan_grad):
            d_fake, feats = fake(x_sigma if gan_grad else x_sigma.detach(), sigma, cond, return_features=True)
            logits = discriminator(feats)
        d_fake = d_fake.detach()
    if d_fake.shape != x.shape:
        raise ValueError(f"fake score output shape {tuple(d_fake.shape)} does not match generator output {tuple(x.shape)}")
    return StepContext(x=x, sigma=sigma, x_sigma=x_sigma, cond=cond, d_teacher=d_teacher, d_fake=d_fake, logits=logits)


class DistillationMethod:
    """A weighting and update rule on the shared step. Subclasses override ``weights`` (and class attributes)."""

    name = "base"
    normalize_by_teacher_residual = True   # c = mean|x − Dᵀ| (DMD); False → c = 1
    uses_discriminator = False              # train a discriminator head next to the fake score
    requires_discriminator = False
    default_fake_updates = 1                # fake-score updates per generator update (TTUR)

    def __init__(self, gan_weight_gen: float = 0.0, kernel_backend: str = "eager"):
        self.gan_weight_gen = gan_weight_gen
        self.kernel_backend = kernel_backend

    def weights(self, ctx: StepContext) -> torch.Tensor | None:
        return None  # w ≡ 1

    def pseudo_gradient(self, ctx: StepContext) -> torch.Tensor:
        return weighted_difference(ctx.x.detach(), ctx.d_teacher, ctx.d_fake, self.weights(ctx),
                                   normalize=self.normalize_by_teacher_residual, backend=self.kernel_backend)

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        g = self.pseudo_gradient(ctx)
        loss = surrogate_loss(ctx.x, g)
        metrics = {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}
        if self.gan_weight_gen > 0 and ctx.logits is not None:
            gan = generator_gan_loss(ctx.logits)
            loss = loss + self.gan_weight_gen * gan
            metrics["gan_gen_loss"] = float(gan.detach())
        return loss, metrics

    def state_modules(self) -> dict:
        """Modules with state that belongs in checkpoints (e.g. σ-bin ratio means)."""
        return {}


class DiffInstruct(DistillationMethod):
    """Diff-Instruct: g = Dᶠ − Dᵀ (weight 1, no normaliser), fake score and generator updated 1:1."""

    name = "diff_instruct"
    normalize_by_teacher_residual = False


class DMD(DistillationMethod):
    """DMD: g = (Dᶠ − Dᵀ)/mean|x − Dᵀ|. The optional regression term is applied by the trainer on teacher pairs."""

    name = "dmd"

    def __init__(self, regression_weight: float = 0.0, **kw):
        super().__init__(**kw)
        self.regression_weight = regression_weight


class DMD2(DMD):
    """DMD2: DMD + a GAN head on the fake network's bottleneck, two-time-scale updates (5 fake : 1 generator)."""

    name = "dmd2"
    uses_discriminator = True
    default_fake_updates = 5

    def __init__(self, gan_weight_gen: float = 3e-3, **kw):
        super().__init__(gan_weight_gen=gan_weight_gen, **kw)


class FDistill(DMD2):
    """f-distill: g = ĥ(r)·(Dᶠ − Dᵀ)/mean|x − Dᵀ| with r = exp(ℓ) from the discriminator,
    r normalised by its running mean per σ bin, h = f''(r)r², ĥ = h / batch mean of h (methods.md §2)."""

    name = "f_distill"
    requires_discriminator = True

    def __init__(self, divergence="jensen_shannon", gan_weight_gen: float = 1e-3, logit_clamp: float = 10.0,
                 ratio_min: float = 0.1, ratio_max: float = 20.0, sigma_bins: int = 10, bin_ema: float = 0.0,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, normalize_weights: bool = True, **kw):
        super().__init__(gan_weight_gen=gan_weight_gen, **kw)
        self.divergence = get_divergence(divergence)
        self.logit_clamp, self.ratio_min, self.ratio_max = logit_clamp, ratio_min, ratio_max
        self.normalize_weights = normalize_weights
        self.bins = SigmaBinNormalizer(sigma_bins, sigma_min, sigma_max, bin_ema) if sigma_bins else None

    def weights(self, ctx: StepContext) -> torch.Tensor:
        if ctx.logits is None:
            raise ValueError("f-distill needs discriminator logits: the discriminator supplies the density ratio r")
        r = density_ratio(ctx.logits, self.logit_clamp, self.ratio_min, self.ratio_max)
        if self.bins is not None:
            self.bins.to(r.device)
            r = self.bins(r, ctx.sigma)
        h = self.divergence.h(r)
        return batch_normalized(h) if self.normalize_weights else h

    def state_modules(self) -> dict:
        return {"ratio_bins": self.bins} if self.bins is not None else {}


METHODS = {cls.name: cls for cls in (DiffInstruct, DMD, DMD2, FDistill)}


def build_method(name: str, **kwargs) -> DistillationMethod:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name](**kwargs)
