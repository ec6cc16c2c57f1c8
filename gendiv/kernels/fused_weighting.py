"""f-distill's whole per-step weighting as one function, for one compiled region (issue 13).

    r  = clamp(exp(clamp(ℓ, ±L)), r_min, r_max)                 ratio from the discriminator logit
    r ← r / m_b(σ),  m_b ← EMA of the batch mean of r in σ-bin b  (NVIDIA's bin estimator; bins updated in place)
    ĥ  = h(r) / mean_batch h(r)                                  divergence weight, batch-normalised
    g  = ĥ·(Dᶠ − Dᵀ)/(mean_CHW|x − Dᵀ| + ε)                      the pseudo-gradient

Eagerly these are a dozen small [B]-sized kernels around the CHW-sized difference; compiled (``backend="compile"``)
inductor fuses them into a few loops over the batch. The function is pure (returns the new bin state) so it
traces whole; the eager composition in gendiv.kernels.ratio + weighted_difference is the reference it must equal
(tests/test_performance.py). Multi-process runs keep the eager path, which all-reduces the batch statistics.
"""
from __future__ import annotations

import functools

import torch

from .score_difference import weighted_difference_eager


def fdistill_weighting(x, d_teacher, d_fake, logits, sigma, edges, means, seen, h, logit_clamp: float = 10.0,
                       ratio_min: float = 0.1, ratio_max: float = 20.0, bin_ema: float = 0.0, use_bins: bool = True,
                       normalize_weights: bool = True, normalize: bool = True, eps: float = 1e-6):
    """(g, new bin means, new bin-seen flags)."""
    r = logits.detach().float().clamp(-logit_clamp, logit_clamp).exp().clamp(ratio_min, ratio_max)
    if use_bins:
        num_bins = means.shape[0]
        idx = torch.bucketize(sigma.float(), edges[1:-1], right=True).clamp(0, num_bins - 1)
        sums = torch.zeros(num_bins, device=r.device).scatter_add(0, idx, r)
        counts = torch.zeros(num_bins, device=r.device).scatter_add(0, idx, torch.ones_like(r))
        hit = counts > 0
        decay = torch.where(seen, torch.full_like(sums, bin_ema), torch.zeros_like(sums))
        updated = decay * means + (1 - decay) * sums / counts.clamp_min(1)
        means = torch.where(hit, updated, means)
        seen = seen | hit
        r = r / (means[idx] + 1e-6)
    w = h(r)
    if normalize_weights:
        w = w / w.mean().clamp_min(eps)
    return weighted_difference_eager(x, d_teacher, d_fake, w, normalize, eps), means, seen


@functools.cache
def _compiled():
    return torch.compile(fdistill_weighting, dynamic=False, fullgraph=True)


def fdistill_weighting_compiled(*args, **kwargs):
    return _compiled()(*args, **kwargs)
