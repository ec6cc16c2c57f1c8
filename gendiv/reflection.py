"""Reflected diffusion on a box [a, b]^d: fold, the reflected (Neumann) heat kernel and its score, the VE schedule.

Per coordinate on the unit interval, with heat time τ = σ²/2 (docs/methods.md §4, Lou & Ermon 2023):

    images  p(x | x₀; σ) = Σ_k φ_σ(x − x₀ + 2k) + φ_σ(x + x₀ + 2k)
    eigen   p(x | x₀; σ) = 1 + 2 Σ_{n≥1} e^{−n²π²τ} cos(nπx) cos(nπx₀)

(the two are one function, by Poisson summation). The image sum is evaluated as a log-sum-exp for τ ≤ 0.1, where
every image term is a Gaussian and nothing cancels; above, the cosine series has ≥ 37% of its value in the constant
and converges in 20 terms. The reference code instead sums both in linear float32 and switches at τ = 0.01, where the
20-term cosine series cancels catastrophically (score wrong by up to 1e7) and the linear image sum underflows beyond
~7σ. In d dimensions the kernel is the product over coordinates, so the score is coordinate-wise.

A box [a, b] maps to the unit interval by u = (x − a)/w, w = b − a: σ_u = σ/w, log p −= log w, score /= w.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InputError
from .space import append_dims

TAU_SWITCH = 0.1          # image sum for τ ≤ 0.1 (σ ≤ 0.447 on the unit interval), cosine series above
NUM_IMAGE_SHIFTS = 5      # k = −5..5: the first omitted image is ≥ 9 units = 20σ away at the switch
NUM_EIGEN_TERMS = 20      # e^{−n²π²τ} at n = 21, τ = 0.1 is e^{−435}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Box:
    """The domain [low, high]^d (the same interval in every coordinate)."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"box bounds must be finite, got [{self.low}, {self.high}]")
        if self.high <= self.low:
            raise ValueError(f"a box needs high > low, got [{self.low}, {self.high}]")

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / self.width

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return self.low + self.width * u

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.low, self.high)

    def uniform(self, shape, generator=None, device=None, dtype=torch.float32, margin: float = 0.0) -> torch.Tensor:
        """Uniform samples on the box, or on its inner part [margin, 1 − margin] in unit coordinates."""
        u = torch.rand(shape, generator=generator, dtype=dtype)
        return self.from_unit(margin + (1 - 2 * margin) * u).to(device)

    def check_inside(self, x: torch.Tensor, what: str = "data"):
        """Raise an InputError (a ValueError) naming the offending range if any value of ``x`` lies outside the box."""
        lo, hi = float(x.min()), float(x.max())
        if lo < self.low or hi > self.high:
            raise InputError(f"{what} lies outside the declared box [{self.low:g}, {self.high:g}]: its values span "
                             f"{lo:g}..{hi:g}; declare a box that contains the data (reflected.box) or rescale the data")


UNIT_BOX = Box(0.0, 1.0)


def fold(y: torch.Tensor, box: Box = UNIT_BOX) -> torch.Tensor:
    """Reflect y into the box: in unit coordinates u ↦ u mod 2, then 2 − u where u > 1.

    fold(x₀ + σz) is an exact sample of reflected Brownian motion started at x₀ (the path folded at the walls).
    """
    u = torch.remainder(box.to_unit(y), 2.0)
    return box.from_unit(torch.where(u > 1, 2 - u, u))


def _images_log_kernel_and_score(u, u0, s):
    """Log-sum-exp image sum on [0, 1]: every term φ_σ(u ± u₀ + 2k) has d/du of its argument = +1."""
    shifts = 2.0 * torch.arange(-NUM_IMAGE_SHIFTS, NUM_IMAGE_SHIFTS + 1, dtype=u.dtype, device=u.device)
    # the mirror image through the upper wall is u + u₀ − 2: written as (u − 1) + (u₀ − 1), both exact near the wall,
    # so float32 keeps full resolution in σ = 1e-4 next to x = 1 (u + u₀ rounds at 2.4e-7 there)
    upper = (u + u0) > 1
    mirror = torch.where(upper, (u - 1) + (u0 - 1), u + u0)[..., None] + (shifts + 2.0 * upper[..., None])
    args = torch.cat([(u - u0)[..., None] + shifts, mirror], dim=-1)
    s = s[..., None]
    logits = -0.5 * (args / s) ** 2
    log_p = torch.logsumexp(logits, dim=-1) - torch.log(s[..., 0]) - _LOG_SQRT_2PI
    score = (torch.softmax(logits, dim=-1) * (-args / s**2)).sum(-1)
    return log_p, score


def _eigen_log_kernel_and_score(u, u0, tau):
    """The cosine (Neumann eigenfunction) series on [0, 1] and its x-derivative over itself."""
    n = torch.arange(1, NUM_EIGEN_TERMS + 1, dtype=u.dtype, device=u.device)
    decay = torch.exp(-(n * math.pi) ** 2 * tau[..., None])
    cos0 = torch.cos(n * math.pi * u0[..., None])
    p = 1 + 2 * (decay * torch.cos(n * math.pi * u[..., None]) * cos0).sum(-1)
    dp = -2 * math.pi * (n * decay * torch.sin(n * math.pi * u[..., None]) * cos0).sum(-1)
    return torch.log(p), dp / p


def reflected_log_kernel_and_score(x: torch.Tensor, x0: torch.Tensor, sigma, box: Box = UNIT_BOX):
    """Per element: log p(x | x₀; σ) and ∂ₓ log p of the reflected heat kernel on ``box`` (not summed over dims).

    ``sigma``: a float or a [B] tensor (one σ per sample). Accuracy in float32 over σ ∈ [1e-4, 5] (box width 1),
    against a float64 image sum (tests/test_reflected.py): σ·|score error| ≤ 1e-4 for |x − x₀| ≤ 12σ and ≤ 5e-4 up to
    20σ (measured 6e-5 and 3.4e-4; the float32 logits (a/σ)²/2 ≈ 200 at 20σ carry a 1e-5 absolute rounding error
    that moves the weights of a wall's two images), |log p error| ≤ 1e-5·max(1, |log p|) (measured 2e-6).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if (sigma <= 0).any():
        raise ValueError(f"sigma must be > 0, got min {float(sigma.min()):g}")
    s = _per_element(sigma, x) / box.width
    u, u0 = box.to_unit(x), box.to_unit(x0).expand_as(x)
    tau = 0.5 * s**2
    use_images = tau <= TAU_SWITCH
    s_switch = math.sqrt(2 * TAU_SWITCH)
    # each branch sees only values where it is accurate, so the unused one stays finite under torch.where
    lp_i, sc_i = _images_log_kernel_and_score(u, u0, s.clamp(max=s_switch))
    lp_e, sc_e = _eigen_log_kernel_and_score(u, u0, tau.clamp(min=TAU_SWITCH))
    log_p = torch.where(use_images, lp_i, lp_e) - math.log(box.width)
    score = torch.where(use_images, sc_i, sc_e) / box.width
    return log_p, score


def _per_element(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ broadcast to x: a scalar, one value per sample ([B]), or one per element."""
    if sigma.ndim == 0 or sigma.shape == x.shape:
        return sigma.expand_as(x)
    return append_dims(sigma, x.ndim).expand_as(x)


def reflected_kernel_score(x: torch.Tensor, x0: torch.Tensor, sigma, box: Box = UNIT_BOX) -> torch.Tensor:
    """∇ₓ log p(x | x₀; σ), coordinate-wise: the target of reflected denoising score matching."""
    return reflected_log_kernel_and_score(x, x0, sigma, box)[1]


def reflected_log_density(x: torch.Tensor, x0: torch.Tensor, sigma, box: Box = UNIT_BOX) -> torch.Tensor:
    """log p(x | x₀; σ) summed over every non-batch dimension: [B]."""
    return reflected_log_kernel_and_score(x, x0, sigma, box)[0].flatten(1).sum(1)


def reflected_noise(x0: torch.Tensor, sigma, noise: torch.Tensor, box: Box = UNIT_BOX) -> torch.Tensor:
    """The forward process: fold(x₀ + σ·n), an exact draw from the reflected kernel."""
    return fold(x0 + _per_element(torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device), x0) * noise, box)


# ---------------------------------------------------------------------------------------------
# The VE schedule of reflected diffusion: σ(t) = σ_min (σ_max/σ_min)^t, g(t)² = dσ²/dt
# ---------------------------------------------------------------------------------------------
def reflected_sigma(t, sigma_min: float, sigma_max: float):
    return sigma_min * (sigma_max / sigma_min) ** t


def reflected_g2(t, sigma_min: float, sigma_max: float):
    """g(t)² = d σ(t)²/dt = 2 ln(σ_max/σ_min) σ(t)²."""
    return 2 * math.log(sigma_max / sigma_min) * reflected_sigma(t, sigma_min, sigma_max) ** 2


def mollifier(x: torch.Tensor, box: Box = UNIT_BOX, sharpness: float = 200.0) -> torch.Tensor:
    """A bump that is 1 at the box's centre and vanishes at its walls: exp((4 − 1/(¼ − (½ − u)²))/sharpness).

    It multiplies the probability-flow drift, so a learned score that is not exactly zero at the walls (the exact
    one is: Neumann condition) cannot push the ODE through them (reference code: sharpness 200; an option of ReflectedODEScheduler, off by default).
    """
    u = box.to_unit(x).clamp(0, 1)
    inner = 0.25 - (0.5 - u) ** 2
    return torch.where(inner > 0, torch.exp((4 - 1 / inner.clamp_min(1e-30)) / sharpness), torch.zeros_like(u))
