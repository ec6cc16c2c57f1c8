"""Time-step guidance (TSG, Sadat et al. 2024; docs/guidance.md §5): the negative pass perturbs the time-step
*embedding*, e + κ·t^α·n with t = σ/(1 + σ) ∈ (0, 1), and D_s = D(ê) + s·(D(e) − D(ê)). It needs no condition, so it
guides unconditional models too. The paper's exact κ, α, time parameterisation and layer could not be confirmed; the
choices made here, and what they mean to first order, are derived in docs/guidance.md §5. The perturbation is added
to the output of the UNet's ``time_embedding`` module, the hook point diffusers UNets share.
"""
from __future__ import annotations

import torch

from ..space import append_dims
from .base import GuidedDenoiser


class TimestepGuidedDenoiser(GuidedDenoiser):
    config_fields = ("guidance_scale", "guidance_rescale", "noise_scale", "alpha", "seed")

    def __init__(self, denoiser, guidance_scale: float = 1.0, guidance_rescale: float = 0.0, noise_scale: float = 1.0,
                 alpha: float = 1.0, seed: int = 0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        net = getattr(denoiser, "unet", None)
        self.embedding = getattr(net, "time_embedding", None)
        if self.embedding is None:
            raise ValueError(f"time-step guidance perturbs a time-step embedding, but {type(denoiser).__name__} has no "
                             "time-embedding hook point (needs a diffusers UNet with .time_embedding)")
        self.noise_scale, self.alpha, self.seed = float(noise_scale), float(alpha), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def negative(self, x, sigma, cond):
        t = sigma / (1 + sigma)
        scale = self.noise_scale * t.float() ** self.alpha

        def perturb(module, inputs, output):
            noise = torch.randn(output.shape, generator=self.generator).to(output.device, output.dtype)
            return output + append_dims(scale, output.ndim).to(output.dtype) * noise

        handle = self.embedding.register_forward_hook(perturb)
        try:
            return self.denoiser(x, sigma, cond)
        finally:
            handle.remove()
