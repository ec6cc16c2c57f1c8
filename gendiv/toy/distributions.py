"""Distributions whose noised marginals p_σ = p ∗ N(0, σ²I) are known in closed form.

A mixture of components (diagonal Gaussians or uniform boxes) gives, at every σ, the exact log-density,
score and denoiser (posterior mean E[x₀ | x₀ + σn = x]), for the unconditional and the class-conditional
distribution alike. These are the teachers that need no training and the truths tests compare against.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffusers.configuration_utils import FrozenDict

from ..condition import Condition, as_condition
from ..space import as_sigma_batch, sigma_dtype
from .convex import CONVEX_DISTRIBUTIONS

LOG_2PI = math.log(2 * math.pi)


class ComponentMixture:
    """Σ_k π_k · c_k(x), with per-component noised log-density and posterior mean supplied by subclasses.

    ``component_class`` (optional, [K] ints) makes the mixture class-conditional: p(x | y) keeps the components of
    class y with their weights renormalised; the null condition is the whole mixture.
    """

    metric_sigma = 0.0  # σ at which exact log-likelihoods are reported (>0 for densities with hard edges)

    def __init__(self, weights, component_class=None, name: str = "mixture"):
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be a 1-D tensor of non-negative numbers with positive sum")
        self.weights = w / w.sum()
        self.component_class = None if component_class is None else torch.as_tensor(component_class, dtype=torch.long)
        self.num_classes = None if self.component_class is None else int(self.component_class.max()) + 1
        self.name = name

    # -- subclass interface -------------------------------------------------------------------
    dim: int

    def _component_log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # [B, K]
        raise NotImplementedError

    def _component_mean(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # [B, K, d]
        raise NotImplementedError

    def _sample_components(self, k: torch.Tensor, generator) -> torch.Tensor:  # [n, d]
        raise NotImplementedError

    def component_contains(self, x: torch.Tensor) -> torch.Tensor:  # [B, K] bool: x "belongs to" component k
        raise NotImplementedError

    # -- shared mixture algebra -----------------------------------------------------------------
    def _log_weights(self, cond: Condition | None, batch: int) -> torch.Tensor:
        logw = self.weights.log().expand(batch, -1).clone()
        if cond is None or cond.class_labels is None:
            return logw
        if self.component_class is None:
            raise ValueError(f"{self.name} is unconditional but got class labels")
        labels = cond.class_labels.cpu()
        if ((labels < 0) | (labels >= self.num_classes)).any():
            raise ValueError(f"class label out of range [0, {self.num_classes})")
        keep = self.component_class[None, :] == labels[:, None]
        if cond.drop is not None:
            keep = keep | cond.drop.cpu()[:, None]
        logw = torch.where(keep, logw, torch.full_like(logw, -math.inf))
        return logw - torch.logsumexp(logw, dim=1, keepdim=True)

    def _prepare(self, x, sigma, cond):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name} expects points [B, {self.dim}], got {tuple(x.shape)}")
        x64 = x.cpu().to(torch.float64)  # differentiable: log_prob/denoise support autograd in x
        s = torch.as_tensor(sigma, dtype=torch.float64).cpu()
        s = s.expand(x.shape[0]) if s.ndim == 0 else s
        if s.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(s.shape)}")
        return x64, s, as_condition(cond)

    def log_prob(self, x: torch.Tensor, sigma=0.0, cond=None) -> torch.Tensor:
        """log p_σ(x | cond), exact, float64 on the CPU (differentiable in x)."""
        x64, s, cond = self._prepare(x, sigma, cond)
        return torch.logsumexp(self._log_weights(cond, x.shape[0]) + self._component_log_prob(x64, s), dim=1)

    def responsibilities(self, x: torch.Tensor, sigma=0.0, cond=None) -> torch.Tensor:
        x64, s, cond = self._prepare(x, sigma, cond)
        return torch.softmax(self._log_weights(cond, x.shape[0]) + self._component_log_prob(x64, s), dim=1)

    def denoise(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """E[x₀ | x₀ + σn = x, cond] = Σ_k P(k | x) E[x₀ | x, k], returned in x's dtype and device."""
        x64, s, cond = self._prepare(x, sigma, cond)
        resp = torch.softmax(self._log_weights(cond, x.shape[0]) + self._component_log_prob(x64, s), dim=1)
        mean = (resp[:, :, None] * self._component_mean(x64, s)).sum(1)
        return mean.to(dtype=x.dtype, device=x.device)

    def score(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """∇ log p_σ(x | cond) = (D(x, σ) − x)/σ² (σ > 0)."""
        x64, s, _ = self._prepare(x, sigma, cond)
        if (s <= 0).any():
            raise ValueError("score needs sigma > 0")
        d = self.denoise(x64, s, cond)
        return ((d - x64) / s[:, None] ** 2).to(dtype=x.dtype, device=x.device)

    def sample(self, n: int, generator: torch.Generator | None = None, class_labels=None) -> torch.Tensor:
        """n exact samples (float32), optionally from p(x | class_labels)."""
        cond = None if class_labels is None else Condition(class_labels=torch.as_tensor(class_labels).long().cpu())
        if cond is not None and cond.class_labels.shape != (n,):
            raise ValueError(f"class_labels must have shape [{n}]")
        probs = self._log_weights(cond, n).exp()
        k = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return self._sample_components(k, generator).float()

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class labels drawn with their marginal probability (class-conditional mixtures only)."""
        if self.component_class is None:
            raise ValueError(f"{self.name} is unconditional")
        class_w = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.component_class, self.weights)
        return torch.multinomial(class_w, n, replacement=True, generator=generator)


class GaussianMixture(ComponentMixture):
    """Σ_k π_k N(μ_k, Σ_k) with diagonal (``variances``: scalar, [K] or [K, d]) or full (``covariances``: [K, d, d])
    covariances. With Σ_k = U_k Λ_k U_kᵀ the noised component is N(μ_k, U_k(Λ_k + σ²)U_kᵀ), and its posterior mean
    is μ_k + U_k·Λ_k/(Λ_k + σ²)·U_kᵀ(x − μ_k); diagonal covariances are the case U_k = I (no rotation is applied)."""

    def __init__(self, means, variances=None, weights=None, component_class=None, name: str = "gaussian_mixture",
                 covariances=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        if (variances is None) == (covariances is None):
            raise ValueError("give either variances (diagonal) or covariances [K, d, d] (full)")
        self.rotations = None  # U_k, None for diagonal covariances
        if covariances is not None:
            cov = torch.as_tensor(covariances, dtype=torch.float64)
            if cov.shape != (k, d, d):
                raise ValueError(f"covariances must have shape [K, d, d] = [{k}, {d}, {d}], got {tuple(cov.shape)}")
            if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-12):
                raise ValueError("covariances must be symmetric")
            v, self.rotations = torch.linalg.eigh(cov)
        else:
            v = torch.as_tensor(variances, dtype=torch.float64)
            if v.ndim == 0:
                v = v.expand(k, d)
            elif v.ndim == 1 and v.numel() == k:
                v = v[:, None].expand(k, d)
            if v.shape != (k, d):
                raise ValueError(f"variances must be a scalar, [K] or [K, d] = [{k}, {d}], got {tuple(v.shape)}")
        self.variances = v.clone()  # eigenvalues Λ_k for full covariances
        if (self.variances <= 0).any():
            raise ValueError("variances (covariance eigenvalues) must be > 0")
        self.dim = d
        super().__init__(torch.ones(k) if weights is None else weights, component_class, name)

    def _rotate(self, diff):  # [B, K, d] → coordinates in each component's eigenbasis, U_kᵀ(x − μ_k)
        return diff if self.rotations is None else torch.einsum("kde,bkd->bke", self.rotations, diff)

    def _unrotate(self, y):
        return y if self.rotations is None else torch.einsum("kde,bke->bkd", self.rotations, y)

    def _component_log_prob(self, x, sigma):
        var = self.variances[None] + sigma[:, None, None] ** 2  # [B, K, d]
        y = self._rotate(x[:, None, :] - self.means[None])
        return -0.5 * (LOG_2PI + var.log() + y**2 / var).sum(-1)

    def _component_mean(self, x, sigma):
        var = self.variances[None]
        shrink = var / (var + sigma[:, None, None] ** 2)
        return self.means[None] + self._unrotate(shrink * self._rotate(x[:, None, :] - self.means[None]))

    def _sample_components(self, k, generator):
        z = torch.randn(k.shape[0], self.dim, generator=generator, dtype=torch.float64)
        y = self.variances[k].sqrt() * z
        if self.rotations is not None:
            y = torch.einsum("nde,ne->nd", self.rotations[k], y)
        return self.means[k] + y

    def component_contains(self, x):
        """Within the 99.9% ellipsoid of component k (χ² quantile with d degrees of freedom)."""
        x64 = x.detach().cpu().to(torch.float64)
        m2 = (self._rotate(x64[:, None, :] - self.means[None]) ** 2 / self.variances[None]).sum(-1)
        return m2 <= _chi2_quantile(self.dim, 0.999)


def _chi2_quantile(d: int, q: float) -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(q, d))


class BoxMixture(ComponentMixture):
    """Σ_k π_k Uniform(box_k): per coordinate the noised density is [Φ((hi−x)/σ) − Φ((lo−x)/σ)]/(hi−lo).

    Everything is computed in log space (log Φ differences), so scores stay finite far from the boxes.
    Log-likelihoods are reported at ``metric_sigma`` because the clean density has hard edges.
    """

    metric_sigma = 0.02

    def __init__(self, lows, highs, weights=None, name: str = "box_mixture"):
        self.lows = torch.as_tensor(lows, dtype=torch.float64)
        self.highs = torch.as_tensor(highs, dtype=torch.float64)
        if self.lows.shape != self.highs.shape or (self.highs <= self.lows).any():
            raise ValueError("lows and highs must have the same shape [K, d] with highs > lows")
        self.dim = self.lows.shape[1]
        super().__init__(torch.ones(self.lows.shape[0]) if weights is None else weights, None, name)

    def _log_mass(self, x, sigma):
        """log[Φ(b) − Φ(a)] with a = (lo−x)/σ, b = (hi−x)/σ, stable on both tails; also a, b."""
        s = sigma[:, None, None].clamp_min(1e-300)
        a = (self.lows[None] - x[:, None, :]) / s
        b = (self.highs[None] - x[:, None, :]) / s
        return log_normal_interval_mass(a, b), a, b, s

    def _component_log_prob(self, x, sigma):
        log_mass, *_ = self._log_mass(x, sigma)
        return (log_mass - (self.highs - self.lows).log()[None]).sum(-1)

    def _component_mean(self, x, sigma):
        """E[x₀ | x, k] per coordinate: the mean of N(x, σ²) truncated to [lo, hi], x + σ·(φ(a) − φ(b))/(Φ(b) − Φ(a))."""
        _, a, b, s = self._log_mass(x, sigma)
        return x[:, None, :] + s * truncated_normal_shift(a, b)

    def _sample_components(self, k, generator):
        u = torch.rand(k.shape[0], self.dim, generator=generator, dtype=torch.float64)
        return self.lows[k] + u * (self.highs[k] - self.lows[k])

    def component_contains(self, x):
        x64 = x.detach().cpu().to(torch.float64)[:, None, :]
        return ((x64 >= self.lows[None]) & (x64 <= self.highs[None])).all(-1)


def log_normal_interval_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log[Φ(b) − Φ(a)] for a < b, stable on both tails (for a > 0 the mirrored form Φ(−a) − Φ(−b) is used)."""
    upper = a > 0
    hi_term = torch.where(upper, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))
    lo_term = torch.where(upper, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))
    return hi_term + torch.log(-torch.expm1(lo_term - hi_term))


class ReflectedBoxMixture(BoxMixture):
    """Uniform boxes inside a domain ``box``, noised by the reflected heat kernel (reflected diffusion's teacher).

    Per coordinate, in unit coordinates of the domain, the reflected kernel is a sum of Gaussians centred on the images
    x₀ + 2k and −x₀ + 2k, so a uniform interval [lo, hi] noised at σ has density Σ_k over the image intervals
    [lo + 2k, hi + 2k] and [−hi + 2k, −lo + 2k] of [Φ(b) − Φ(a)]/(hi − lo): a log-sum-exp of log Φ differences,
    exact at every σ (|k| ≤ 4σ + 2 leaves < 1e-16 out). ``denoise`` returns the reflected models' canonical output
    x + σ²∇log p_σ (there is no Tweedie posterior mean on a box; this is the score in denoiser form), with the
    score by autograd in float64. ``unreflected()`` is the same data noised without walls, which is what an ordinary
    diffusion model learns (the thresholding baseline's teacher).
    """

    def __init__(self, lows, highs, weights=None, box=None, name: str = "reflected_box_mixture"):
        from ..reflection import UNIT_BOX

        super().__init__(lows, highs, weights, name)
        self.box = UNIT_BOX if box is None else box
        if (self.lows < self.box.low).any() or (self.highs > self.box.high).any():
            raise ValueError(f"{name}: every component must lie inside the box [{self.box.low}, {self.box.high}]")

    def _component_log_prob(self, x, sigma):
        w = self.box.width
        u, lo, hi = self.box.to_unit(x), self.box.to_unit(self.lows), self.box.to_unit(self.highs)
        s = (sigma / w).clamp_min(1e-300)
        k_max = int(math.ceil(4 * float(s.max()))) + 2
        shifts = 2.0 * torch.arange(-k_max, k_max + 1, dtype=torch.float64)[:, None, None]
        img_lo = torch.cat([lo[None] + shifts, -hi[None] + shifts])  # [images, K, d]
        img_hi = torch.cat([hi[None] + shifts, -lo[None] + shifts])
        a = (img_lo[None] - u[:, None, None, :]) / s[:, None, None, None]
        b = (img_hi[None] - u[:, None, None, :]) / s[:, None, None, None]
        log_mass = torch.logsumexp(log_normal_interval_mass(a, b), dim=1)  # [B, K, d]
        return (log_mass - (hi - lo).log()[None] - math.log(w)).sum(-1)

    def denoise(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        x64, s, _ = self._prepare(x.detach(), sigma, cond)
        with torch.enable_grad():
            x64 = x64.requires_grad_(True)
            score = torch.autograd.grad(self.log_prob(x64, s, cond).sum(), x64)[0]
        return (x64 + s[:, None] ** 2 * score).detach().to(dtype=x.dtype, device=x.device)

    def _component_mean(self, x, sigma):
        raise NotImplementedError("a reflected mixture has no closed-form posterior mean; use denoise (score form)")

    def unreflected(self) -> BoxMixture:
        return BoxMixture(self.lows, self.highs, self.weights, name=f"{self.name}_unreflected")


_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _upper_tail_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(φ(a) − φ(b))/(Φ(b) − Φ(a)) for 0 ≤ a < b, through the scaled erfc (erfcx): with E = exp(−(b² − a²)/2),
    the ratio is √(2/π)·(1 − E)/(erfcx(a/√2) − E·erfcx(b/√2)); every term is O(1), so nothing cancels or underflows."""
    e = torch.exp(-0.5 * (b - a) * (b + a))
    return _SQRT_2_OVER_PI * (-torch.expm1(-0.5 * (b - a) * (b + a))) / (
        torch.special.erfcx(a / _SQRT_2) - e * torch.special.erfcx(b / _SQRT_2))


def truncated_normal_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(φ(a) − φ(b))/(Φ(b) − Φ(a)): the mean of a standard normal truncated to [a, b], stable for any a < b.

    Both tails use the erfcx (Mills-ratio) form, by symmetry for b < 0; an interval containing 0 has mass ≥ that of
    [0, min(|a|, b)] and is computed directly.
    """
    upper = a > 0
    lower = b < 0
    a_up = torch.where(upper, a, torch.ones_like(a))
    b_up = torch.where(upper, b, torch.full_like(b, 2.0))
    a_lo = torch.where(lower, -b, torch.ones_like(b))
    b_lo = torch.where(lower, -a, torch.full_like(a, 2.0))
    mid = (torch.exp(-0.5 * a**2) - torch.exp(-0.5 * b**2)) / math.sqrt(2 * math.pi) / (
        torch.special.ndtr(b) - torch.special.ndtr(a))
    return torch.where(upper, _upper_tail_shift(a_up, b_up), torch.where(lower, -_upper_tail_shift(a_lo, b_lo), mid))


class AnalyticDenoiser(nn.Module):
    """A closed-form mixture as a denoiser: stands wherever a network denoiser stands (a teacher with no training)."""

    def __init__(self, distribution: ComponentMixture):
        super().__init__()
        self.distribution = distribution
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @property
    def num_classes(self):
        return self.distribution.num_classes

    @property
    def config(self) -> FrozenDict:
        """What pipelines and trainers read of a denoiser's config (a network denoiser has more)."""
        return FrozenDict(dim=self.distribution.dim, num_classes=self.distribution.num_classes, scalar_names=[],
                          sigma_data=0.5, parameterization="analytic", distribution=self.distribution.name)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64  # computed in float64 on the CPU, returned in the input's dtype

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        out = self.distribution.denoise(x, sigma.detach(), cond)
        return (out, None) if return_features else out


# -------------------------------------------------------------------------------------------------
# Named benchmark distributions
# -------------------------------------------------------------------------------------------------
def ring8_imbalanced(radius: float = 1.0, std: float = 0.05, small_weight: float = 0.05) -> GaussianMixture:
    """8 Gaussians on a circle; mode 0 (at angle 0) carries ``small_weight`` of the mass, the rest share the remainder."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    weights = torch.full((8,), (1 - small_weight) / 7, dtype=torch.float64)
    weights[0] = small_weight
    return GaussianMixture(means, std**2, weights, name="ring8_imbalanced")


def with_outliers(clean: GaussianMixture, fraction: float, mean, std: float, name: str) -> GaussianMixture:
    """``clean`` with a share ``fraction`` of the mass moved to a corrupting Gaussian N(mean, std²I): a training set
    with outliers whose clean part is still known exactly (the last component is the corruption)."""
    if not 0 < fraction < 1:
        raise ValueError(f"outlier fraction must be in (0, 1), got {fraction}")
    if clean.rotations is not None:
        raise ValueError("with_outliers needs a diagonal-covariance mixture")
    means = torch.cat([clean.means, torch.as_tensor(mean, dtype=torch.float64).reshape(1, clean.dim)])
    variances = torch.cat([clean.variances, torch.full((1, clean.dim), std**2, dtype=torch.float64)])
    weights = torch.cat([(1 - fraction) * clean.weights, torch.tensor([fraction], dtype=torch.float64)])
    return GaussianMixture(means, variances, weights, name=name)


def ring8_outliers(fraction: float = 0.1) -> GaussianMixture:
    """ring8_imbalanced with 10% corrupted samples in a cluster at (2.5, 2.5), far off the ring."""
    return with_outliers(ring8_imbalanced(), fraction, [2.5, 2.5], 0.3, name="ring8_outliers")


def checkerboard(n: int = 4, half_width: float = 1.0) -> BoxMixture:
    """The dark squares of an n×n board inside [−w, w]²: exact uniform boxes."""
    edges = torch.linspace(-half_width, half_width, n + 1, dtype=torch.float64)
    lows, highs = [], []
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                lows.append([edges[i], edges[j]])
                highs.append([edges[i + 1], edges[j + 1]])
    return BoxMixture(lows, highs, name="checkerboard")


def mixture16d(num_components: int = 10, std: float = 0.1, seed: int = 0) -> GaussianMixture:
    """A 16-D mixture with seeded random means (scale 0.5) and unequal weights."""
    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(num_components, 16, generator=g, dtype=torch.float64)
    weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, std**2, weights, name="mixture16d")


def conditional2d(std: float = 0.08) -> GaussianMixture:
    """4 classes in 2-D, two Gaussians per class placed at opposite corners of a ring of 8."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, std**2, torch.ones(8), component_class=torch.arange(8) % 4, name="conditional2d")


def box_checkerboard(n: int = 4) -> ReflectedBoxMixture:
    """The dark squares of an n×n board filling the unit box: mass touching every wall (reflected suite)."""
    board = checkerboard(n, half_width=0.5)
    return ReflectedBoxMixture(board.lows + 0.5, board.highs + 0.5, name="box_checkerboard")


def box_uniform() -> ReflectedBoxMixture:
    """Uniform on the unit box: its reflected p_σ is uniform at every σ (score 0)."""
    return ReflectedBoxMixture([[0.0, 0.0]], [[1.0, 1.0]], name="box_uniform")


def box_corner(side: float = 0.1, corner_weight: float = 0.7) -> ReflectedBoxMixture:
    """Mass piled in a corner: a side×side square at the origin (weight 0.7) over a uniform floor on the box."""
    return ReflectedBoxMixture([[0.0, 0.0], [0.0, 0.0]], [[side, side], [1.0, 1.0]], [corner_weight, 1 - corner_weight],
                               name="box_corner")


DISTRIBUTIONS = {
    "ring8_imbalanced": ring8_imbalanced,
    "checkerboard": checkerboard,
    "mixture16d": mixture16d,
    "conditional2d": conditional2d,
}
# the reflected suite: data on the unit box, noised by the reflected heat kernel (sampled by reflected samplers only)
REFLECTED_DISTRIBUTIONS = {
    "box_checkerboard": box_checkerboard,
    "box_uniform": box_uniform,
    "box_corner": box_corner,
}


# training sets with corrupted samples (robust objectives): the clean distribution is the named one without outliers
CORRUPTED_DISTRIBUTIONS = {
    "ring8_outliers": ring8_outliers,
}


def get_distribution(name: str, **kwargs) -> ComponentMixture:
    known = {**DISTRIBUTIONS, **REFLECTED_DISTRIBUTIONS, **CORRUPTED_DISTRIBUTIONS, **CONVEX_DISTRIBUTIONS}
    if name not in known:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {sorted(known)}")
    return known[name](**kwargs)
