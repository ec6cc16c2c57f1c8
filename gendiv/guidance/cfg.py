"""Classifier-free guidance as a Denoiser → Denoiser map (diffusers convention, methods.md §5).

D_s = D_u + s·(D_c − D_u); s = 1 is the conditional model. Conditional and null passes run as one batch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..condition import Condition, as_condition
from ..space import as_sigma_batch, sigma_dtype


class ClassifierFreeGuidance(nn.Module):
    def __init__(self, denoiser: nn.Module, guidance_scale: float = 1.0):
        super().__init__()
        self.denoiser = denoiser
        self.guidance_scale = float(guidance_scale)

    @property
    def config(self):
        return self.denoiser.config

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        s = self.guidance_scale
        if s == 1.0 or cond is None or cond.class_labels is None:
            return self.denoiser(x, sigma, cond, return_features=return_features)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        both = Condition.cat([cond, cond.with_null()])
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both, return_features=return_features)
        d, feats = out if return_features else (out, None)
        d_cond, d_uncond = d.chunk(2)
        guided = d_uncond + s * (d_cond - d_uncond)
        return (guided, None if feats is None else feats.chunk(2)[0]) if return_features else guided
