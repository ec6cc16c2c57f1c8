"""Exact metrics against a distribution whose density is known: log-likelihood, sliced W₂, per-mode recall."""
from __future__ import annotations

import torch

from .distributions import ComponentMixture


def mean_log_likelihood(dist: ComponentMixture, x: torch.Tensor, cond=None, sigma: float | None = None) -> float:
    """Mean of log p_σ(x) under the true density (σ = ``dist.metric_sigma`` unless given). Higher is better."""
    sigma = dist.metric_sigma if sigma is None else sigma
    lp = dist.log_prob(x, sigma, cond)
    return float(lp.clamp_min(-1e4).mean())


def sliced_wasserstein2(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """√(E_θ W₂²(θᵀx, θᵀy)) over random unit directions θ; 1-D W₂ by matching quantiles."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two point sets [N, d] and [M, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = (x.detach().cpu().double() @ theta).sort(0).values
    py = (y.detach().cpu().double() @ theta).sort(0).values
    n = max(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    qx = _quantiles(px, q)
    qy = _quantiles(py, q)
    return float(((qx - qy) ** 2).mean().sqrt())


def _quantiles(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function of sorted columns at levels q (piecewise constant)."""
    m = sorted_vals.shape[0]
    idx = (q * m).floor().long().clamp(0, m - 1)
    return sorted_vals[idx]


def mode_recall(dist: ComponentMixture, x: torch.Tensor) -> torch.Tensor:
    """Per component k: min(1, (fraction of samples inside component k) / π_k).

    1 means the mode holds at least its share of samples; 0 means it was dropped.
    """
    inside = dist.component_contains(x)
    resp = dist.responsibilities(x, 0.0 if dist.metric_sigma == 0 else dist.metric_sigma)
    best = resp.argmax(1)
    assigned = torch.zeros_like(inside)
    assigned[torch.arange(x.shape[0]), best] = True
    frac = (inside & assigned).double().mean(0)
    return (frac / dist.weights).clamp(max=1.0)


def exact_metrics(dist: ComponentMixture, samples: torch.Tensor, reference: torch.Tensor | None = None,
                  cond=None, seed: int = 0) -> dict:
    """The metrics gendiv reports on toy distributions, as a flat dict of floats."""
    if reference is None:
        reference = dist.sample(samples.shape[0], torch.Generator().manual_seed(seed + 1))
    recall = mode_recall(dist, samples)
    out = {
        "sliced_w2": sliced_wasserstein2(samples, reference, seed=seed),
        "log_likelihood": mean_log_likelihood(dist, samples, cond),
        "min_mode_recall": float(recall.min()),
        "mean_mode_recall": float(recall.mean()),
    }
    smallest = int(dist.weights.argmin())
    out["smallest_mode_recall"] = float(recall[smallest])
    return out
