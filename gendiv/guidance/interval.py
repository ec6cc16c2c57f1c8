"""Guidance on a σ window (Kynkäänniemi et al. 2024; methods.md §5): the inner guider for σ_lo < σ ≤ σ_hi, the plain
conditional model elsewhere. The window is in σ, not in step fractions, so it means the same at every step count.
"""
from __future__ import annotations

import torch
from torch import nn

from ..condition import as_condition
from ..space import as_sigma_batch, sigma_dtype
from .base import Guidance


class IntervalGuidance(nn.Module):
    """Wraps any gendiv guider (CFG, ICG, autoguidance, ...): ``IntervalGuidance(ClassifierFreeGuidance(D, 2), 0.28, 5.42)``."""

    def __init__(self, guider: Guidance, sigma_lo: float = 0.0, sigma_hi: float = float("inf")):
        super().__init__()
        if not isinstance(guider, Guidance):
            raise ValueError(f"IntervalGuidance wraps a gendiv guider, got {type(guider).__name__}")
        if not 0 <= sigma_lo < sigma_hi:
            raise ValueError(f"the guidance window needs 0 ≤ sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi}]")
        self.guider, self.sigma_lo, self.sigma_hi = guider, float(sigma_lo), float(sigma_hi)

    @property
    def config(self):
        return self.guider.config

    @property
    def conditional(self):
        return self.guider.conditional

    def check_schedule(self, sigma_min: float, sigma_max: float):
        """A window that misses the sampler's σ range [σ_min, σ_max] would silently never guide: refuse it."""
        if self.sigma_hi < sigma_min or self.sigma_lo >= sigma_max:
            raise ValueError(f"guidance window ({self.sigma_lo:g}, {self.sigma_hi:g}] lies outside the schedule's σ range "
                             f"[{sigma_min:g}, {sigma_max:g}]: it would never apply")

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        inside = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)
        if bool(inside.all()):
            return self.guider(x, sigma, cond, return_features=return_features)
        if not bool(inside.any()):
            return self.conditional(x, sigma, cond, return_features=return_features)
        # mixed σ within a batch (training-time teacher calls): each sample takes its own branch
        g = self.guider(x, sigma, cond, return_features=return_features)
        c = self.conditional(x, sigma, cond, return_features=return_features)
        mask = inside.reshape(-1, *([1] * (x.ndim - 1)))
        if return_features:
            return torch.where(mask, g[0], c[0]), g[1]
        return torch.where(mask, g, c)
