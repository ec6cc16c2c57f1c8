"""Targets on convex domains with closed-form moments (mirror flow matching's truths): Dirichlet on the simplex and
the uniform distribution on the unit ball. They sample like the mixtures (``sample(n, generator)``) so that a
ToySource trains on them."""
from __future__ import annotations

import math

import torch


class Dirichlet:
    """Dirichlet(α) on the simplex Δ^{K} ⊂ ℝ^{K+1}: mean α/α₀, Var x_i = α_i(α₀ − α_i)/(α₀²(α₀ + 1)),
    Cov(x_i, x_j) = −α_iα_j/(α₀²(α₀ + 1)), α₀ = Σα."""

    num_classes = None
    domain = "simplex"

    def __init__(self, alpha, name: str = "dirichlet"):
        self.alpha = torch.as_tensor(alpha, dtype=torch.float64)
        if self.alpha.ndim != 1 or len(self.alpha) < 2 or (self.alpha <= 0).any():
            raise ValueError(f"Dirichlet needs ≥ 2 concentrations > 0, got {alpha}")
        self.dim, self.name = len(self.alpha), name

    def mean(self) -> torch.Tensor:
        return self.alpha / self.alpha.sum()

    def covariance(self) -> torch.Tensor:
        a0, m = self.alpha.sum(), self.mean()
        return (torch.diag(m) - torch.outer(m, m)) / (a0 + 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        log_norm = torch.lgamma(a.sum()) - torch.lgamma(a).sum()
        return log_norm + ((a - 1) * x.double().clamp_min(1e-300).log()).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, class_labels=None) -> torch.Tensor:
        """Normalised Gamma(α_i) draws (the Gamma sampler seeded from ``generator``)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g = torch._standard_gamma(self.alpha.expand(n, -1).contiguous())
        return (g / g.sum(1, keepdim=True)).float()


class UniformBall:
    """Uniform on the unit ball in ℝ^d: E x = 0, E xxᵀ = I/(d + 2), E‖x‖² = d/(d + 2)."""

    num_classes = None
    domain = "ball"

    def __init__(self, dim: int = 2, name: str = "ball_uniform"):
        self.dim, self.name = dim, name

    def mean(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    def covariance(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=torch.float64) / (self.dim + 2)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_volume = 0.5 * self.dim * math.log(math.pi) - math.lgamma(0.5 * self.dim + 1)
        inside = x.double().norm(dim=1) <= 1
        return torch.where(inside, torch.full((len(x),), -log_volume, dtype=torch.float64),
                           torch.full((len(x),), -math.inf, dtype=torch.float64))

    def sample(self, n: int, generator: torch.Generator | None = None, class_labels=None) -> torch.Tensor:
        """A uniform direction times a radius U^{1/d}."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        r = torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1 / self.dim)
        return (r * z / z.norm(dim=1, keepdim=True)).float()


def moment_errors(target, x: torch.Tensor) -> dict:
    """Largest absolute error of the sample mean and covariance against the target's closed form."""
    x = x.double()
    return {"mean_error": float((x.mean(0) - target.mean()).abs().max()),
            "cov_error": float((torch.cov(x.T) - target.covariance()).abs().max())}


def dirichlet_3() -> Dirichlet:
    """Dirichlet(2, 3, 0.8) on the 2-simplex: one concentration < 1 puts mass against an edge."""
    return Dirichlet([2.0, 3.0, 0.8], name="dirichlet_3")


CONVEX_DISTRIBUTIONS = {"dirichlet_3": dirichlet_3, "ball_uniform": UniformBall}
