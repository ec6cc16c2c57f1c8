"""Independent condition guidance (ICG, Sadat et al. 2024; docs/methods.md §5).

The negative pass uses a class label ĉ drawn independently of x (uniform over the classes) instead of the null class,
so a conditional model trained without label dropout can be guided. The paper's argument is that x and an independent
ĉ carry no information about each other, so the model queried at ĉ should stand in for p(x). For the model's own
conditionals that is only an approximation: the exact identity is ∇log p(x) = Σ_c p(c | x)·∇log p(x | c), an
average weighted by the posterior p(c | x), while ICG's negative is one draw of the prior-weighted average
Σ_c p(c)·∇log p(x | c), which differs wherever p(c | x) ≠ p(c) (tests/test_guidance.py checks both on the exact
mixture). ICG is therefore guidance away from a random class, not CFG.
"""
from __future__ import annotations

import torch

from ..condition import Condition
from .base import GuidedDenoiser, require_labels


class IndependentConditionGuidedDenoiser(GuidedDenoiser):
    config_fields = ("guidance_scale", "guidance_rescale", "seed")

    def __init__(self, denoiser, guidance_scale: float = 1.0, guidance_rescale: float = 0.0, seed: int = 0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def negative_condition(self, cond, batch, device):
        require_labels(self, cond, "independent condition guidance")
        labels = torch.randint(0, self.config.num_classes, (batch,), generator=self.generator).to(device)
        return Condition(class_labels=labels, drop=None if cond.drop is None else torch.zeros_like(cond.drop),
                         scalars=dict(cond.scalars))
