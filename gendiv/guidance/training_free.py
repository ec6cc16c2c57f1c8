"""Training-free guidance: TFG's design space (Ye et al. 2024) with FreeDoM (Yu et al. 2023), DPS, MPGD and UGD as
named points of it (docs/methods.md §10, docs/guidance.md).

The denoiser sees the condition it can take (an unconditional one none: the labels are then the guide's target only).
The guide is a differentiable log-likelihood on clean data, ``log_likelihood(x0, cond) -> [B]`` (e.g. a classifier's
log p(c | x₀), or −energy), evaluated on the denoiser's clean estimate x̂₀ = D(x, σ). With a denoiser D and
ĝ(x₀) = log f̃(c | x₀), one guided prediction is

    D_g = D(x, σ) + s·[ Δ_mean + ρ·σ²·∇_x ĝ(D(x, σ)) ]

* variance guidance ρ: the gradient w.r.t. the noisy input, through the denoiser; in denoiser form this is classifier
  guidance with the noisy classifier approximated by f(c | x̂₀(x)) (ρ = 1 is the Bayes weight σ², unit-free; TFG's ρ
  multiplies a raw gradient, so values do not carry over);
* mean guidance μ: ``mean_steps`` ascent steps on x̂₀ itself, x̂₀ ← x̂₀ + μ·∇_{x̂₀} ĝ(x̂₀), no gradient through D;
  Δ_mean is the total move (TFG's Δ₀);
* implicit dynamics γ: ĝ is the log of f averaged over Gaussian perturbations of x̂₀ with standard deviation
  γ·σ/√(1 + σ²) (TFG's noise-proportional schedule in EDM units), by ``smoothing_samples`` Monte-Carlo draws
  (log-mean-exp);
* recurrence N: each sampler step is repeated N times, re-noising the result from σ_{i+1} back to σ_i in between
  (FreeDoM's time travel). This is a sampler feature: :func:`sample_time_travel` reads ``recurrence`` from the guider;
  diffusers-style pipelines, whose scheduler steps once per call, refuse recurrence > 1.

s (``guidance_scale``) multiplies the whole guidance term: s = 0 is the unguided model, s = 1 the method as set.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..condition import as_condition
from ..space import append_dims, as_sigma_batch, sigma_dtype
from .base import GuidedDenoiser, check_scale
from .classifier import classifier_classes, condition_for, input_gradient, label_log_prob


class ClassifierLogLikelihood(nn.Module):
    """log p(c | x₀) from a classifier of clean data, ``classifier(x0) -> logits``, or of noised data evaluated at a
    fixed small ``sigma`` (``classifier(x0, sigma)``, e.g. a :class:`NoiseConditionalClassifier`)."""

    def __init__(self, classifier: nn.Module, sigma: float | None = None):
        super().__init__()
        self.classifier, self.sigma = classifier, sigma
        self.target_classes = classifier_classes(classifier)

    def forward(self, x0: torch.Tensor, cond) -> torch.Tensor:
        if cond is None or cond.class_labels is None:
            raise ValueError("a classifier log-likelihood needs the target class labels")
        logits = self.classifier(x0) if self.sigma is None else self.classifier(x0, self.sigma)
        return label_log_prob(logits, cond.class_labels)


class TrainingFreeGuidedDenoiser(GuidedDenoiser):
    config_fields = ("guidance_scale", "variance_scale", "mean_scale", "mean_steps", "smoothing", "smoothing_samples",
                     "recurrence", "seed")

    def __init__(self, denoiser: nn.Module, log_likelihood, guidance_scale: float = 1.0, variance_scale: float = 0.0,
                 mean_scale: float = 0.0, mean_steps: int = 1, smoothing: float = 0.0, smoothing_samples: int = 1,
                 recurrence: int = 1, seed: int = 0):
        super().__init__(denoiser, guidance_scale)
        if not callable(log_likelihood):
            raise ValueError(f"log_likelihood must be callable (x0, cond) -> [B], got {type(log_likelihood).__name__}")
        self.log_likelihood = log_likelihood
        self.variance_scale = check_scale("variance_scale", variance_scale)
        self.mean_scale = check_scale("mean_scale", mean_scale)
        self.smoothing = check_scale("smoothing", smoothing)
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be ≥ 0, got {smoothing}")
        for name, value in (("mean_steps", mean_steps), ("smoothing_samples", smoothing_samples),
                            ("recurrence", recurrence)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.mean_steps, self.smoothing_samples, self.recurrence = mean_steps, smoothing_samples, recurrence
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    # -- named points of the design space (TFG's Table 1, in this module's units) -----------------------------
    @classmethod
    def dps(cls, denoiser, log_likelihood, variance_scale: float = 1.0, **kwargs):
        """DPS (Chung et al. 2023): variance guidance only."""
        return cls(denoiser, log_likelihood, variance_scale=variance_scale, **kwargs)

    @classmethod
    def freedom(cls, denoiser, log_likelihood, variance_scale: float = 1.0, recurrence: int = 2, **kwargs):
        """FreeDoM: variance guidance with time travel (each step repeated ``recurrence`` times)."""
        return cls(denoiser, log_likelihood, variance_scale=variance_scale, recurrence=recurrence, **kwargs)

    @classmethod
    def mpgd(cls, denoiser, log_likelihood, mean_scale: float = 1.0, **kwargs):
        """MPGD (He et al. 2024): one mean-guidance step on x̂₀, no gradient through the denoiser."""
        return cls(denoiser, log_likelihood, mean_scale=mean_scale, mean_steps=1, **kwargs)

    @classmethod
    def ugd(cls, denoiser, log_likelihood, variance_scale: float = 1.0, mean_scale: float = 1.0, mean_steps: int = 3,
            recurrence: int = 2, **kwargs):
        """UGD (Bansal et al. 2023): variance and iterated mean guidance with recurrence."""
        return cls(denoiser, log_likelihood, variance_scale=variance_scale, mean_scale=mean_scale,
                   mean_steps=mean_steps, recurrence=recurrence, **kwargs)

    # -- the guided prediction -----------------------------------------------------------------------------
    def is_off(self, cond) -> bool:
        return self.guidance_scale == 0.0 or (self.variance_scale == 0.0 and self.mean_scale == 0.0)

    def smoothed_log_likelihood(self, x0: torch.Tensor, sigma: torch.Tensor, cond, noise: torch.Tensor | None):
        """log f̃ = log mean_k f(x₀ + γ_σ ε_k) (γ_σ = γ·σ/√(1 + σ²)); plain log f without smoothing."""
        if noise is None:
            return self.log_likelihood(x0, cond)
        gamma = append_dims(self.smoothing * sigma / (1 + sigma**2).sqrt(), x0.ndim).to(x0.dtype)
        k = noise.shape[0]
        flat = (x0[None] + gamma[None] * noise).reshape(-1, *x0.shape[1:])
        repeated = cond if cond is None else cond.index(torch.arange(x0.shape[0], device=x0.device).repeat(k))
        logf = self.log_likelihood(flat, repeated).reshape(k, x0.shape[0])
        return torch.logsumexp(logf, dim=0) - math.log(k)

    def smoothing_noise(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.smoothing == 0:
            return None
        noise = torch.randn((self.smoothing_samples, *x.shape), generator=self.generator, dtype=torch.float64)
        return noise.to(x.device, x.dtype)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        if self.is_off(cond):
            return self.denoiser(x, sigma, condition_for(self.denoiser, cond), return_features=return_features)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        noise = self.smoothing_noise(x)
        base_cond, feats = condition_for(self.denoiser, cond), None
        if self.variance_scale != 0:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                out = self.denoiser(leaf, sigma, base_cond, return_features=return_features)
                base, feats = out if return_features else (out, None)
                (grad,) = torch.autograd.grad(self.smoothed_log_likelihood(base, sigma, cond, noise).sum(), leaf)
            base, feats = base.detach(), None if feats is None else feats.detach()
            delta = self.variance_scale * append_dims(sigma**2, x.ndim).to(base.dtype) * grad.to(base.dtype)
        else:
            out = self.denoiser(x, sigma, base_cond, return_features=return_features)
            base, feats = out if return_features else (out, None)
            delta = torch.zeros_like(base)
        if self.mean_scale != 0:
            x0, guide = base, lambda v: self.smoothed_log_likelihood(v, sigma, cond, noise)
            for _ in range(self.mean_steps):
                x0 = x0 + self.mean_scale * input_gradient(guide, x0)
            delta = delta + (x0 - base)
        guided = self.combine(base + delta, base)
        return (guided, feats) if return_features else guided


@torch.no_grad()
def sample_time_travel(denoiser, x, sigmas, cond=None, recurrence: int | None = None, generator=None, callback=None):
    """Euler steps on the probability-flow ODE (k-diffusion signature), each repeated ``recurrence`` times with the
    result re-noised from σ_{i+1} back to σ_i in between: x ← x_{i+1} + √(σ_i² − σ_{i+1}²)·n, which gives x the
    marginal at σ_i again when x_{i+1} has the marginal at σ_{i+1} (FreeDoM's time travel, TFG's recurrence).
    ``recurrence`` defaults to the denoiser's own (a :class:`TrainingFreeGuidedDenoiser`), else 1 (plain Euler)."""
    r = getattr(denoiser, "recurrence", 1) if recurrence is None else recurrence
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"recurrence must be a positive integer, got {r!r}")
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        for j in range(r):
            denoised = denoiser(x, s.expand(x.shape[0]).to(x.device), cond)
            if callback is not None:
                callback({"i": i, "repeat": j, "x": x, "sigma": s, "denoised": denoised})
            x_next = x + (x - denoised) / s * (s_next - s)
            if j < r - 1:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                x = x_next + (s**2 - s_next**2).sqrt() * noise
        x = x_next
    return x
