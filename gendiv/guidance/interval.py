"""Guidance on a σ window (Kynkäänniemi et al. 2024; docs/methods.md §5): the inner guider for σ_lo < σ ≤ σ_hi, the plain
conditional model elsewhere. The window is in σ, not in step fractions, so it means the same at every step count.

The decision is made in float64 on the σ the caller passes; pipelines pass their scheduler's own ``sigmas`` entries,
so a window edge placed on one of the scheduler's σ values is decided exactly (open below, closed above).
"""
from __future__ import annotations

import torch

from ..condition import as_condition
from ..space import as_sigma_batch, sigma_dtype
from .base import GuidedDenoiser


def in_window(sigma: torch.Tensor, sigma_lo: float, sigma_hi: float) -> torch.Tensor:
    """σ_lo < σ ≤ σ_hi, compared in float64 (a float32 σ is not rounded against a float64 edge)."""
    s = torch.as_tensor(sigma).to(torch.float64)
    return (s > sigma_lo) & (s <= sigma_hi)


def check_window(sigma_lo: float, sigma_hi: float):
    if not 0 <= sigma_lo < sigma_hi:
        raise ValueError(f"the guidance window needs 0 ≤ sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi}]")


def check_window_meets_schedule(sigma_lo: float, sigma_hi: float, step_sigmas: torch.Tensor):
    """A window that holds none of the σ the sampler evaluates would silently never guide: refuse it."""
    step_sigmas = torch.as_tensor(step_sigmas).flatten()
    if not bool(in_window(step_sigmas, sigma_lo, sigma_hi).any()):
        raise ValueError(f"guidance window ({sigma_lo:g}, {sigma_hi:g}] holds none of the schedule's σ values "
                         f"[{float(step_sigmas.min()):g}, {float(step_sigmas.max()):g}] ({len(step_sigmas)} steps): "
                         "it would never apply")


class SigmaIntervalGuidedDenoiser(GuidedDenoiser):
    """Wraps any gendiv guider (CFG, ICG, autoguidance, ...):
    ``SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(D, 2), 0.28, 5.42)``. Its scale is the inner guider's."""

    config_fields = ("sigma_lo", "sigma_hi")

    def __init__(self, guider: GuidedDenoiser, sigma_lo: float = 0.0, sigma_hi: float = float("inf")):
        if not isinstance(guider, GuidedDenoiser):
            raise ValueError(f"SigmaIntervalGuidedDenoiser wraps a gendiv guider, got {type(guider).__name__}")
        check_window(sigma_lo, sigma_hi)
        super().__init__(guider, guider.guidance_scale)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)

    @property
    def guider(self) -> GuidedDenoiser:
        return self.denoiser

    @property
    def guider_config(self) -> dict:
        return {**super().guider_config, "guider": self.guider.guider_config}

    @classmethod
    def _from_settings(cls, settings: dict, denoiser, networks: dict):
        settings = dict(settings)
        inner = settings.pop("guider", None)
        if inner is None:
            raise ValueError("a SigmaIntervalGuidedDenoiser config needs the inner guider's config under 'guider'")
        return cls(GuidedDenoiser.from_config(inner, denoiser, **networks), **settings)

    def check_schedule(self, step_sigmas: torch.Tensor):
        check_window_meets_schedule(self.sigma_lo, self.sigma_hi, step_sigmas)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        inside = in_window(sigma, self.sigma_lo, self.sigma_hi)
        if bool(inside.all()):
            return self.guider(x, sigma, cond, return_features=return_features)
        if not bool(inside.any()):
            return self.conditional(x, sigma, cond, return_features=return_features)
        # mixed σ within a batch (training-time teacher calls): each sample takes its own branch
        g = self.guider(x, sigma, cond, return_features=return_features)
        c = self.conditional(x, sigma, cond, return_features=return_features)
        mask = inside.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        if return_features:
            return torch.where(mask, g[0], c[0]), g[1]
        return torch.where(mask, g, c)
