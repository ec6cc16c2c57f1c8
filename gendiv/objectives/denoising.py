"""Denoising score matching in the canonical space (EDM loss, docs/methods.md §0)."""
from __future__ import annotations

import torch

from ..space import append_dims, edm_loss_weight, sample_sigma


def denoising_loss(denoiser, x0: torch.Tensor, cond=None, sigma: torch.Tensor | None = None,
                   sigma_sampler: str = "lognormal", sigma_data: float = 0.5, generator=None,
                   noise: torch.Tensor | None = None, reduce: bool = True, **sampler_kwargs) -> torch.Tensor:
    """E_σ,n[ λ(σ)‖D(x₀ + σn, σ) − x₀‖² ] with λ(σ) = 1/σ² + 1/σ_d², averaged over elements.

    Any denoiser parameterisation trains with this loss, because D already returns x̂₀.
    """
    batch = x0.shape[0]
    if sigma is None:
        sigma = sample_sigma(sigma_sampler, batch, generator=generator, device=x0.device, **sampler_kwargs)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if generator is not None \
            else torch.randn_like(x0)
    x_sigma = x0 + append_dims(sigma, x0.ndim) * noise
    per_sample = weighted_denoising_error(denoiser(x_sigma, sigma, cond), x0, sigma, sigma_data)
    return per_sample.mean() if reduce else per_sample


def weighted_denoising_error(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                             sigma_data: float = 0.5) -> torch.Tensor:
    """Per sample: λ(σ)·mean_elements (D − x₀)², λ(σ) = 1/σ² + 1/σ_d² (for callers that already ran D)."""
    per_elem = append_dims(edm_loss_weight(sigma, sigma_data), x0.ndim) * (denoised.float() - x0.float()) ** 2
    return per_elem.flatten(1).mean(1)
