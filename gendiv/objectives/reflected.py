"""Reflected denoising score matching on a box (Lou & Ermon 2023; docs/methods.md §4).

    t ~ U(t_eps, 1),  σ = σ_min (σ_max/σ_min)^t,  x_σ = fold(x₀ + σn),  target s* = ∇ log p_refl(x_σ | x₀; σ)
    loss = E λ(σ) ‖s_θ(x_σ, σ) − s*‖²,  λ = σ² (default) or g(t)² = 2 ln(σ_max/σ_min) σ²

Any gendiv denoiser trains with it: its score is s_θ = (D − x)/σ², so σ²‖s_θ − s*‖² = ‖D − D*‖²/σ² with
D* = x_σ + σ² s*. On a box D is not a posterior mean, only the score written in denoiser form; every guider and
sampler in gendiv consumes it unchanged.
"""
from __future__ import annotations

import math

import torch

from ..reflection import UNIT_BOX, Box, reflected_kernel_score, reflected_noise, reflected_sigma
from ..space import append_dims

WEIGHTINGS = ("sigma2", "g2")
REFLECTED_SIGMA_SAMPLERS = ("log_uniform", "lognormal")


def sample_reflected_sigma(batch: int, sigma_min: float, sigma_max: float, kind: str = "log_uniform",
                           scale: float = 1.0, t_eps: float = 1e-5, generator=None, device=None) -> torch.Tensor:
    """Training σ: ``log_uniform`` is σ(t) at t ~ U(t_eps, 1) (the reference code's draw); ``lognormal`` is EDM's
    ln(σ/scale) ~ N(−1.2, 1.2²) in units of ``scale`` (half the box width), clamped to [σ_min, σ_max]."""
    if kind == "log_uniform":
        t = t_eps + (1 - t_eps) * torch.rand(batch, generator=generator)
        sigma = reflected_sigma(t, sigma_min, sigma_max)
    elif kind == "lognormal":
        sigma = (scale * (-1.2 + 1.2 * torch.randn(batch, generator=generator)).exp()).clamp(sigma_min, sigma_max)
    else:
        raise ValueError(f"unknown reflected σ sampler {kind!r}; choose one of {REFLECTED_SIGMA_SAMPLERS}")
    return sigma.to(device)


def reflected_denoising_loss(denoiser, x0: torch.Tensor, cond=None, box: Box = UNIT_BOX, sigma_min: float = 0.01,
                             sigma_max: float = 5.0, weighting: str = "sigma2", sigma: torch.Tensor | None = None,
                             noise: torch.Tensor | None = None, generator=None, t_eps: float = 1e-5,
                             reduce: bool = True) -> torch.Tensor:
    """Mean over elements of λ(σ)(s_θ − s*)² per sample (then over the batch unless ``reduce=False``)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown reflected weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if sigma is None:
        sigma = sample_reflected_sigma(x0.shape[0], sigma_min, sigma_max, t_eps=t_eps, generator=generator,
                                       device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_sigma = reflected_noise(x0, sigma, noise, box)
    target = x_sigma + append_dims(sigma, x0.ndim) ** 2 * reflected_kernel_score(x_sigma, x0, sigma, box)
    # σ²‖s_θ − s*‖² = ‖D − D*‖²/σ²; the g² weighting is the same times the constant 2 ln(σ_max/σ_min)
    scale = 2 * math.log(sigma_max / sigma_min) if weighting == "g2" else 1.0
    err = (denoiser(x_sigma, sigma, cond).float() - target.float()) ** 2 / append_dims(sigma.float(), x0.ndim) ** 2
    per_sample = scale * err.flatten(1).mean(1)
    return per_sample.mean() if reduce else per_sample
