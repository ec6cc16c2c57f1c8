"""Fréchet distance, KID, FID∞ and precision/recall on feature arrays (float64, NumPy).

Fréchet distance in the symmetric form (docs/methods.md §8): Tr√(Σ₁Σ₂) = Σ √λ(R Σ₂ R) with R = Σ₁^{½} from ``eigh``;
R is computed once per reference and cached. No ``scipy.linalg.sqrtm`` (whose ``disp`` argument SciPy 1.18 removed).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    meta: dict = field(default_factory=dict)
    _sqrt: np.ndarray | None = None

    @classmethod
    def from_features(cls, feats: np.ndarray, meta: dict | None = None) -> "FeatureStats":
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise InputError(f"need at least 2 feature vectors [N, d], got shape {feats.shape}")
        if len(feats) <= feats.shape[1]:
            warnings.warn(f"{len(feats)} samples for {feats.shape[1]}-d features: the covariance is singular, so FID is "
                          "biased and unstable at this size (use more samples, or compare with KID)", stacklevel=2)
        return cls(feats.mean(0), np.cov(feats, rowvar=False), len(feats), dict(meta or {}))

    def sqrt_sigma(self) -> np.ndarray:
        """Σ^{½} by symmetric eigen-decomposition (negative round-off eigenvalues clipped), cached."""
        if self._sqrt is None:
            w, v = np.linalg.eigh(self.sigma)
            self._sqrt = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return self._sqrt

    def save(self, path):
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n, meta=np.array(repr(self.meta)))

    @classmethod
    def load(cls, path) -> "FeatureStats":
        import ast

        from .images import open_npz, read_npz_array

        with open_npz(path, "mu") as d:
            if "mu" not in d or "sigma" not in d:
                raise InputError(f"{path} is not a statistics file (needs 'mu' and 'sigma', found {list(d.keys())})")
            mu, sigma = (read_npz_array(d, k, path).astype(np.float64) for k in ("mu", "sigma"))
            n = int(read_npz_array(d, "n", path)) if "n" in d else -1
            try:
                meta = ast.literal_eval(str(read_npz_array(d, "meta", path))) if "meta" in d else {}
            except (ValueError, SyntaxError):
                raise InputError(f"{path}: its 'meta' entry is not readable") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise InputError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise InputError(f"{path}: mu or sigma holds NaN or Inf")
        return cls(mu, sigma, n, meta)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """‖μ_a − μ_b‖² + Tr Σ_a + Tr Σ_b − 2 Σ √λ(R Σ_b R), R = Σ_a^{½} (a is the cached reference side)."""
    if a.mu.shape != b.mu.shape:
        raise InputError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]} (mismatched statistics)")
    r = a.sqrt_sigma()
    m = r @ b.sigma @ r
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_sqrt)


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """Unbiased MMD² with the kernel k(x, y) = (xᵀy/d + 1)³, mean and std over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise InputError("KID needs at least 2 samples on each side")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def fid_infinity(fake: np.ndarray, reference: FeatureStats, n_points: int = 15, n_min: int = 5000, seed: int = 0):
    """Chong & Forsyth: FID_N on random subsets at n_points sizes evenly spaced in [n_min, N], fitted linearly in
    1/N; returns (intercept FID∞, slope, list of (N, FID_N))."""
    fake = np.asarray(fake, np.float64)
    points = subset_curve(fake, lambda x: frechet_distance(reference, FeatureStats.from_features(x)), n_points, n_min,
                          seed, "FID∞")
    intercept, slope = extrapolate_in_inverse_n(points)
    return intercept, slope, points


def subset_curve(values: np.ndarray, score, n_points: int, n_min: int, seed: int, name: str) -> list[tuple[int, float]]:
    """(N, score of a random N-subset of ``values``) at ``n_points`` sizes evenly spaced in [n_min, len(values)]."""
    n_max = len(values)
    if n_max < n_min:
        raise InputError(f"{name} needs at least n_min={n_min} samples, got {n_max}")
    rng = np.random.default_rng(seed)
    sizes = np.linspace(n_min, n_max, n_points).astype(int)
    return [(int(n), score(values[rng.choice(n_max, n, replace=False)])) for n in sizes]


def extrapolate_in_inverse_n(points) -> tuple[float, float]:
    """Least-squares fit FID_N = FID∞ + slope/N; returns (FID∞, slope)."""
    x = np.array([1 / n for n, _ in points], dtype=np.float64)
    y = np.array([v for _, v in points], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, max_points: int = 10000, seed: int = 0):
    """Improved precision/recall (Kynkäänniemi et al.): a sample counts if it falls inside some k-NN ball of the other set."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    real = real[rng.permutation(len(real))[:max_points]]
    fake = fake[rng.permutation(len(fake))[:max_points]]
    if min(len(real), len(fake)) <= k:
        raise InputError(f"precision/recall with k={k} needs more than {k} samples per side")

    def radii(x):
        d = _pairwise(x, x)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(manifold, radius, queries):
        return float((_pairwise(queries, manifold) <= radius[None]).any(1).mean())

    return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


def _pairwise(a, b):
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))
