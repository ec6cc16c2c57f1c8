"""The canonical space: σ schedules, time samplers and parameterisation conversions.

Everything in gendiv meets in EDM's variance-exploding form ``x_σ = x₀ + σ·n`` with a denoiser
``D(x_σ, σ) ≈ E[x₀ | x_σ]`` (docs/methods.md §0). Other parameterisations convert affinely at fixed
``(x_t, t)``; the functions below are the only place those formulas live.
"""
from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


# ---------------------------------------------------------------------------------------------
# σ schedules and time samplers
# ---------------------------------------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True, device=None) -> torch.Tensor:
    """Karras et al. grid: σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, decreasing."""
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(torch.float32).to(device)


def sample_lognormal_sigma(batch: int, p_mean: float = -1.2, p_std: float = 1.2, generator=None,
                           device=None) -> torch.Tensor:
    """EDM training σ: ln σ ~ N(p_mean, p_std²)."""
    z = torch.randn(batch, generator=generator, device=device)
    return (p_mean + p_std * z).exp()


def sample_karras_index_sigma(batch: int, num_points: int = 1000, min_index: int = 0, max_index: int | None = None,
                              sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                              generator=None, device=None) -> torch.Tensor:
    """σ at an index drawn uniformly from [min_index, max_index] of a Karras grid (DMD2 uses [20, 980] of 1000).

    The grid is ordered from σ_min (index 0) to σ_max (index num_points − 1), as in DMD2's code.
    """
    max_index = num_points - 1 if max_index is None else max_index
    if not 0 <= min_index <= max_index < num_points:
        raise ValueError(f"need 0 <= min_index <= max_index < num_points, got {min_index}, {max_index}, {num_points}")
    grid = karras_sigmas(num_points, sigma_min, sigma_max, rho, append_zero=False).flip(0).to(device)
    idx = torch.randint(min_index, max_index + 1, (batch,), generator=generator, device=device)
    return grid[idx]


def sample_uniform_sigma(batch: int, sigma_min: float = 0.002, sigma_max: float = 80.0, generator=None,
                         device=None) -> torch.Tensor:
    """σ uniform in log-space between σ_min and σ_max."""
    u = torch.rand(batch, generator=generator, device=device)
    return (math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min))).exp()


def _sigma_from_log_snr(log_snr: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """σ of a log-SNR λ = log(1/σ²) in the canonical VE space: σ = e^{−λ/2}, clamped to [σ_min, σ_max]."""
    return (-0.5 * log_snr).exp().clamp(sigma_min, sigma_max)


def sample_laplace_sigma(batch: int, mu: float = 0.0, b: float = 0.5, sigma_min: float = 0.002,
                         sigma_max: float = 80.0, generator=None, device=None) -> torch.Tensor:
    """Hang et al. 2024 ("Improved Noise Schedule for Diffusion Training", Eq. 9): λ = log SNR ~ Laplace(μ, b), by
    inverse CDF λ = μ − b·sgn(u)·ln(1 − 2|u|), u ~ U(−½, ½); the mass sits on mid noise levels around σ = e^{−μ/2}."""
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64) - 0.5
    log_snr = mu - b * u.sign() * torch.log1p(-2 * u.abs())
    return _sigma_from_log_snr(log_snr, sigma_min, sigma_max).float()


def sample_cauchy_sigma(batch: int, mu: float = 0.0, gamma: float = 1.0, sigma_min: float = 0.002,
                        sigma_max: float = 80.0, generator=None, device=None) -> torch.Tensor:
    """Hang et al. 2024's heavy-tailed alternative: λ = log SNR ~ Cauchy(μ, γ), λ = μ + γ·tan(π(u − ½))."""
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    log_snr = mu + gamma * torch.tan(math.pi * (u - 0.5))
    return _sigma_from_log_snr(log_snr, sigma_min, sigma_max).float()


SIGMA_SAMPLERS = {
    "lognormal": sample_lognormal_sigma,
    "karras_index": sample_karras_index_sigma,
    "log_uniform": sample_uniform_sigma,
    "laplace": sample_laplace_sigma,
    "cauchy": sample_cauchy_sigma,
}


def sample_sigma(kind: str, batch: int, generator=None, device=None, **kwargs) -> torch.Tensor:
    """Draw a batch of training σ from a named sampler (``lognormal``, ``karras_index``, ``log_uniform``,
    ``laplace``, ``cauchy``)."""
    if kind not in SIGMA_SAMPLERS:
        raise ValueError(f"unknown σ sampler {kind!r}; choose one of {sorted(SIGMA_SAMPLERS)}")
    return SIGMA_SAMPLERS[kind](batch, generator=generator, device=device, **kwargs)


# ---------------------------------------------------------------------------------------------
# EDM preconditioning (docs/methods.md §0)
# ---------------------------------------------------------------------------------------------
def edm_preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of EDM, Table 1 of Karras et al. 2022."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """λ(σ) = 1/σ² + 1/σ_d², which makes the effective training target unit-variance."""
    return 1 / sigma**2 + 1 / sigma_data**2


# ---------------------------------------------------------------------------------------------
# VP (alphas_cumprod) and rectified flow ↔ EDM σ
# ---------------------------------------------------------------------------------------------
def vp_sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """EDM σ of each VP step: x_t = α_t x₀ + σ_t ε is x₀ + (σ_t/α_t) n after dividing by α_t."""
    a = alphas_cumprod.to(torch.float64)
    return ((1 - a) / a).sqrt()


def vp_timestep_from_sigma(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Continuous VP timestep whose EDM σ equals ``sigma`` (linear interpolation in log σ)."""
    log_grid = vp_sigmas_from_alphas_cumprod(alphas_cumprod).log().to(sigma.device)  # increasing in t
    log_s = sigma.to(torch.float64).log().clamp(log_grid[0], log_grid[-1])
    hi = torch.searchsorted(log_grid, log_s).clamp(1, len(log_grid) - 1)
    lo = hi - 1
    frac = (log_s - log_grid[lo]) / (log_grid[hi] - log_grid[lo])
    return (lo + frac).to(torch.float32)


def sigma_dtype(x: torch.Tensor, sigma) -> torch.dtype:
    """float64 when x or σ is float64 (analytic denoisers, guidance over them), else float32."""
    if x.dtype == torch.float64 or (torch.is_tensor(sigma) and sigma.dtype == torch.float64):
        return torch.float64
    return torch.float32


def vp_alpha_sigma(sigma: torch.Tensor):
    """(α_t, σ_t) of the VP process that matches EDM σ: α = 1/√(1+σ²), σ_t = σ·α."""
    alpha = 1 / (1 + sigma**2).sqrt()
    return alpha, sigma * alpha


def flow_time_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow x_t = (1−t)x₀ + tε equals (x₀ + σn)(1−t) with σ = t/(1−t), so t = σ/(1+σ)."""
    return sigma / (1 + sigma)


# ---------------------------------------------------------------------------------------------
# Parameterisation conversions at fixed (x_t, α_t, σ_t)
# ---------------------------------------------------------------------------------------------
def x0_from_prediction(pred: torch.Tensor, x_t: torch.Tensor, alpha_t, sigma_t, prediction_type: str) -> torch.Tensor:
    """x̂₀ from a network prediction on x_t = α_t x₀ + σ_t ε (docs/methods.md §0).

    epsilon: x̂₀ = (x_t − σ_t ε̂)/α_t;  v_prediction: x̂₀ = α_t x_t − σ_t v̂ (needs α²+σ²=1);
    sample: x̂₀ = pred;  flow (v = ε − x₀, α = 1−t, σ = t): x̂₀ = x_t − t·v̂.
    """
    if prediction_type == "epsilon":
        return (x_t - sigma_t * pred) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * x_t - sigma_t * pred
    if prediction_type == "sample":
        return pred
    if prediction_type == "flow":
        return x_t - sigma_t * pred
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")


def prediction_from_x0(x0: torch.Tensor, x_t: torch.Tensor, alpha_t, sigma_t, prediction_type: str) -> torch.Tensor:
    """Inverse of :func:`x0_from_prediction` (the training target of a network in that parameterisation)."""
    if prediction_type == "epsilon":
        return (x_t - alpha_t * x0) / sigma_t
    if prediction_type == "v_prediction":
        return (alpha_t * x_t - x0) / sigma_t
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return (x_t - x0) / sigma_t
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Tweedie: ∇log p_σ(x) = (D(x, σ) − x)/σ²."""
    return (denoised - x) / append_dims(sigma, x.ndim) ** 2


def denoiser_from_score(score: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x, σ) = x + σ²·∇log p_σ(x)."""
    return x + append_dims(sigma, x.ndim) ** 2 * score


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a [batch] tensor to broadcast against a tensor with ``ndim`` dimensions."""
    if not torch.is_tensor(t):
        return t
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def as_sigma_batch(sigma, batch: int, device=None, dtype=None) -> torch.Tensor:
    """Normalise σ (float, 0-d or [batch] tensor) to a [batch] tensor, with a clear error otherwise.

    ``dtype=None`` keeps a float64 σ in float64 (exact test beds) and makes everything else float32.
    """
    if dtype is None:
        dtype = torch.float64 if torch.is_tensor(sigma) and sigma.dtype == torch.float64 else torch.float32
    sigma = torch.as_tensor(sigma, device=device, dtype=dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape [{batch}], got {tuple(sigma.shape)}")
    if not torch.isfinite(sigma).all() or (sigma <= 0).any():
        raise ValueError("sigma must be finite and > 0")
    return sigma
