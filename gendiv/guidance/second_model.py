"""Guidance by a second model (methods.md §5).

Autoguidance (Karras et al. 2024): D_w = D_bad + w·(D − D_bad), with D_bad a smaller or less-trained model of the same
conditioning; it needs no null class and works for unconditional models. Unconditional-prior guidance: CFG whose
unconditional prediction comes from another (e.g. base) model, D_u = D_prior(x | ∅).
"""
from __future__ import annotations

from torch import nn

from ..condition import Condition
from .base import Guidance, require_labels


class AutoGuidance(Guidance):
    def __init__(self, denoiser: nn.Module, weak_denoiser: nn.Module, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        if weak_denoiser.config.get("num_classes") != denoiser.config.get("num_classes"):
            raise ValueError("autoguidance needs a weak model of the same conditioning: num_classes "
                             f"{weak_denoiser.config.get('num_classes')} vs {denoiser.config.get('num_classes')}")
        self.weak_denoiser = weak_denoiser

    def negative(self, x, sigma, cond):
        return self.weak_denoiser(x, sigma, cond)


class UnconditionalPriorGuidance(Guidance):
    def __init__(self, denoiser: nn.Module, prior_denoiser: nn.Module, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        self.prior_denoiser = prior_denoiser

    def negative(self, x, sigma, cond):
        require_labels(self, cond, "unconditional-prior guidance")
        prior_cond = None
        if self.prior_denoiser.config.get("num_classes") is not None:  # a conditional prior: its null class
            prior_cond = Condition(class_labels=cond.class_labels, scalars=dict(cond.scalars)).with_null()
        return self.prior_denoiser(x, sigma, prior_cond)
