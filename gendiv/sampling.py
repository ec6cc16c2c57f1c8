"""Small functional samplers in the k-diffusion style: ``sampler(denoiser, x, sigmas, cond=None, ...)``.

``denoiser`` is any D(x, σ, cond) → x̂₀; ``sigmas`` a decreasing grid ending in 0 (see ``space.karras_sigmas``).
The last step always lands on σ = 0, so no residual noise is left in the samples.
"""
from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .space import append_dims, karras_sigmas


def _to_d(x, sigma, denoised):
    """ODE derivative dx/dσ = (x − D(x, σ))/σ (EDM eq. 3 with σ(t) = t)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, cond=None, callback=None, disable: bool = True):
    """Euler steps on the probability-flow ODE (one denoiser call per step)."""
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="euler"):
        s = sigmas[i].expand(x.shape[0]).to(x.device)
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        x = x + _to_d(x, s, denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, cond=None, callback=None, disable: bool = True):
    """EDM Algorithm 1 (deterministic): Heun's 2nd-order correction except on the final step to σ = 0."""
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="heun"):
        s = sigmas[i].expand(x.shape[0]).to(x.device)
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        d = _to_d(x, s, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_next = x + d * dt
        if sigmas[i + 1] > 0:
            s_next = sigmas[i + 1].expand(x.shape[0]).to(x.device)
            d_next = _to_d(x_next, s_next, denoiser(x_next, s_next, cond))
            x_next = x + (d + d_next) / 2 * dt
        x = x_next
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def sample(denoiser, shape, num_steps: int = 18, sampler: str = "heun", cond=None, generator=None, device="cpu",
           sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, disable: bool = True):
    """Draw samples from noise with a Karras grid. Heun with 18 steps is EDM's 35-NFE setting. ``generator``: one
    torch.Generator or, as in diffusers, a list of one per sample."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=device)
    x = randn_tensor(tuple(shape), generator=generator, device=torch.device(device)) * sigmas[0]
    return SAMPLERS[sampler](denoiser, x, sigmas, cond=cond, disable=disable)
