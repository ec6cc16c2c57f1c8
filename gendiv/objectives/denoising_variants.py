"""Variants of the EDM denoising loss for teachers (docs/teacher_objectives.md; docs/methods.md §0 for the base loss).

    pseudo-Huber (Khrapov et al. 2024, scheduled c):  ρ_c(r) = 2c(√(r² + c²) − c),  r² = λ(σ)·mean (D − x₀)²,
        c(σ) = c₀ + (1 − c₀)/(1 + σ)²: ρ ≈ r² (L2) at small σ, ≈ 2c₀|r| (L1, robust) at large σ
    input perturbation (DDPM-IP, Ning et al. 2023, Eq. 6):  D sees x₀ + σ(n + γξ), the target stays x₀

Both reduce to :func:`denoising_loss` exactly: pseudo-Huber as c → ∞ (ρ_c(r) = r² − r⁴/4c² + …), input
perturbation at γ = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..space import append_dims, sample_sigma
from .denoising import weighted_denoising_error


def _sigma_and_noise(x0: torch.Tensor, sigma, noise, sigma_sampler: str, generator, sampler_kwargs: dict):
    """Training σ (from the named sampler unless given) and Gaussian noise like x₀ (unless given)."""
    if sigma is None:
        sigma = sample_sigma(sigma_sampler, x0.shape[0], generator=generator, device=x0.device, **sampler_kwargs)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return sigma, noise


def scheduled_huber_c(sigma: torch.Tensor, c0: float) -> torch.Tensor:
    """c(σ) = c₀ + (1 − c₀)/(1 + σ)²: 1 at σ = 0 (the quadratic regime for unit-variance residuals), c₀ as σ → ∞."""
    return c0 + (1 - c0) / (1 + sigma) ** 2


def pseudo_huber(r2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """ρ_c = 2c(√(r² + c²) − c), written as 2c·r²/(√(r² + c²) + c) so that nothing cancels for r² ≪ c²."""
    return 2 * c * r2 / ((r2 + c**2).sqrt() + c)


def pseudo_huber_denoising_loss(denoiser, x0: torch.Tensor, cond=None, c0: float = 0.1, sigma=None, noise=None,
                                sigma_sampler: str = "lognormal", sigma_data: float = 0.5, generator=None,
                                reduce: bool = True, **sampler_kwargs) -> torch.Tensor:
    """Per sample ρ_{c(σ)}(r), r² = the EDM-weighted squared error of the whole sample: a sample far from what the
    model predicts (a corrupted one) pulls with weight ∝ 1/r instead of r, most at large σ where c(σ) is small."""
    if c0 <= 0:
        raise ValueError(f"pseudo-Huber c0 must be > 0, got {c0}")
    sigma, noise = _sigma_and_noise(x0, sigma, noise, sigma_sampler, generator, sampler_kwargs)
    denoised = denoiser(x0 + append_dims(sigma, x0.ndim) * noise, sigma, cond)
    r2 = weighted_denoising_error(denoised, x0, sigma, sigma_data)
    per_sample = pseudo_huber(r2, scheduled_huber_c(sigma.float(), c0))
    return per_sample.mean() if reduce else per_sample


def input_perturbation_denoising_loss(denoiser, x0: torch.Tensor, cond=None, gamma: float = 0.1, sigma=None,
                                      noise=None, sigma_sampler: str = "lognormal", sigma_data: float = 0.5,
                                      generator=None, reduce: bool = True, **sampler_kwargs) -> torch.Tensor:
    """The EDM loss with the network input x₀ + σ(n + γξ), ξ fresh noise: at training time the model already sees
    inputs whose noise is off by the amount a sampler's accumulated error puts there (exposure bias)."""
    if gamma < 0:
        raise ValueError(f"input perturbation gamma must be ≥ 0, got {gamma}")
    sigma, noise = _sigma_and_noise(x0, sigma, noise, sigma_sampler, generator, sampler_kwargs)
    xi = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    denoised = denoiser(x0 + append_dims(sigma, x0.ndim) * (noise + gamma * xi), sigma, cond)
    per_sample = weighted_denoising_error(denoised, x0, sigma, sigma_data)
    return per_sample.mean() if reduce else per_sample


@dataclass
class TeacherLossConfig:
    """``objective: pseudo_huber`` and ``objective: input_perturbation`` (section ``teacher_loss``)."""

    huber_c0: float = 0.1             # pseudo_huber: c(σ) = c₀ + (1 − c₀)/(1 + σ)², the robust limit as σ grows
    input_perturbation: float = 0.1   # input_perturbation: γ, the paper's value for its image models

    def __post_init__(self):
        if not self.huber_c0 > 0:
            raise ValueError(f"teacher_loss.huber_c0 must be > 0, got {self.huber_c0}")
        if not self.input_perturbation >= 0:
            raise ValueError(f"teacher_loss.input_perturbation must be ≥ 0, got {self.input_perturbation}")
