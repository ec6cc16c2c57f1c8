"""Guidance by a second model (docs/methods.md §5).

Autoguidance (Karras et al. 2024): D_w = D_bad + w·(D − D_bad), with D_bad a smaller or less-trained model of the same
conditioning; it needs no null class and works for unconditional models. (diffusers' ``AutoGuidance`` guider is a
different method of the same name: it skips layers of the one network.) Unconditional-prior guidance (Phunyaphibarn
et al. 2025): CFG whose unconditional prediction comes from another (e.g. base) model, D_u = D_prior(x | ∅); only the
prior's null output is used, so a conditional prior with fewer classes than the fine-tuned model works (the paper's
setting: a fine-tuned DiT guided by its ImageNet base).
"""
from __future__ import annotations

from torch import nn

from .base import GuidedDenoiser, null_condition, require_labels


class AutoGuidedDenoiser(GuidedDenoiser):
    def __init__(self, denoiser: nn.Module, weak_denoiser: nn.Module, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        if weak_denoiser.config.get("num_classes") != denoiser.config.get("num_classes"):
            raise ValueError("autoguidance needs a weak model of the same conditioning: num_classes "
                             f"{weak_denoiser.config.get('num_classes')} vs {denoiser.config.get('num_classes')}")
        self.weak_denoiser = weak_denoiser

    def negative(self, x, sigma, cond):
        return self.weak_denoiser(x, sigma, cond)


class UnconditionalPriorGuidedDenoiser(GuidedDenoiser):
    def __init__(self, denoiser: nn.Module, prior_denoiser: nn.Module, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        self.prior_denoiser = prior_denoiser

    def negative(self, x, sigma, cond):
        require_labels(self, cond, "unconditional-prior guidance")
        if self.prior_denoiser.config.get("num_classes") is None:
            return self.prior_denoiser(x, sigma, None)
        names = self.prior_denoiser.config.get("scalar_names") or ()
        return self.prior_denoiser(x, sigma, null_condition(cond, x.shape[0], x.device, names))  # its null class only
