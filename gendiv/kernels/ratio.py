"""Density-ratio weights of f-distill: r from discriminator logits, σ-bin and batch normalisation (docs/methods.md §2).

All in float32 and without gradient; batch statistics are summed across processes when torch.distributed
is initialised, so every process uses the global mean.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


@torch.no_grad()
def density_ratio(logits: torch.Tensor, logit_clamp: float = 10.0, ratio_min: float = 0.1, ratio_max: float = 20.0):
    """r = clamp(exp(clamp(ℓ, ±logit_clamp)), ratio_min, ratio_max); the discriminator's optimum is ℓ = log p_σ/q_σ."""
    logits = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))
    return logits.clamp(-logit_clamp, logit_clamp).exp().clamp(ratio_min, ratio_max)


@torch.no_grad()
def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of t over the whole global batch (all processes), in at least float32."""
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    stats = _all_reduce_sum(torch.stack([t.sum(), torch.tensor(float(t.numel()), device=t.device, dtype=t.dtype)]))
    return stats[0] / stats[1]


@torch.no_grad()
def batch_normalized(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ĥ = h / max(global batch mean of h, ε) (exactly 1 when h is constant, so reverse KL is DMD exactly)."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    return h / global_mean(h).clamp_min(eps)


class SigmaBinNormalizer(nn.Module):
    """Divides r by its running mean within σ bins (NVIDIA's f-distill estimator).

    ``spacing="linear"``: NVIDIA's equal-width bins in σ (with lognormal σ almost every sample lands in the first
    bin); ``"log"``: equal width in log σ. The bin means are buffers, saved in checkpoints and restored on resume.
    """

    def __init__(self, num_bins: int = 10, sigma_min: float = 0.002, sigma_max: float = 80.0, ema: float = 0.0,
                 spacing: str = "linear"):
        super().__init__()
        if spacing not in ("linear", "log"):
            raise ValueError(f"bin spacing must be 'linear' or 'log', got {spacing!r}")
        self.num_bins, self.ema = num_bins, ema
        edges = torch.linspace(sigma_min, sigma_max, num_bins + 1) if spacing == "linear" else \
            torch.logspace(math.log10(sigma_min), math.log10(sigma_max), num_bins + 1)
        self.register_buffer("edges", edges)
        self.register_buffer("means", torch.ones(num_bins))
        self.register_buffer("seen", torch.zeros(num_bins, dtype=torch.bool))

    def bin_index(self, sigma: torch.Tensor) -> torch.Tensor:
        return (torch.bucketize(sigma.float(), self.edges[1:-1].to(sigma.device), right=True)).clamp(0, self.num_bins - 1)

    @torch.no_grad()
    def forward(self, r: torch.Tensor, sigma: torch.Tensor, update: bool = True) -> torch.Tensor:
        idx = self.bin_index(sigma)
        if update:
            sums = torch.zeros(self.num_bins, device=r.device).scatter_add_(0, idx, r.float())
            counts = torch.zeros(self.num_bins, device=r.device).scatter_add_(0, idx, torch.ones_like(r, dtype=torch.float32))
            sums, counts = _all_reduce_sum(sums), _all_reduce_sum(counts)
            hit = counts > 0
            batch_mean = sums / counts.clamp_min(1)
            decay = torch.where(self.seen.to(r.device), torch.full_like(batch_mean, self.ema), torch.zeros_like(batch_mean))
            new = decay * self.means.to(r.device) + (1 - decay) * batch_mean
            self.means.copy_(torch.where(hit, new, self.means.to(r.device)).to(self.means.device))
            self.seen |= hit.to(self.seen.device)
        return r.float() / (self.means.to(r.device)[idx] + 1e-6)
