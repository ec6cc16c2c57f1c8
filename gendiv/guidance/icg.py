"""Independent condition guidance (ICG, Sadat et al. 2024; methods.md §5).

The negative pass uses a class label drawn independently of x (uniform over the classes) instead of the null class,
so a conditional model trained without label dropout can be guided: E_c'[∇ log p(x | c')] = ∇ log p(x).
"""
from __future__ import annotations

import torch

from ..condition import Condition
from .base import Guidance, require_labels


class IndependentConditionGuidance(Guidance):
    def __init__(self, denoiser, guidance_scale: float = 1.0, guidance_rescale: float = 0.0, seed: int = 0):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        self.generator = torch.Generator().manual_seed(seed)

    def negative_condition(self, cond, batch, device):
        require_labels(self, cond, "independent condition guidance")
        labels = torch.randint(0, self.config.num_classes, (batch,), generator=self.generator).to(device)
        return Condition(class_labels=labels, drop=None if cond.drop is None else torch.zeros_like(cond.drop),
                         scalars=dict(cond.scalars))
