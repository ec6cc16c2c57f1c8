"""The exact noise-conditional classifier of a class-conditional mixture: the truth classifier guidance is tested on."""
from __future__ import annotations

import torch
from torch import nn

from .distributions import ComponentMixture


class AnalyticClassifier(nn.Module):
    """log p(c | x_σ) = log Σ_{k ∈ c} π_k p_k,σ(x) − log Σ_k π_k p_k,σ(x), exact and differentiable in x (float64
    inside, returned in x's dtype): ``classifier(x, sigma) -> [B, num_classes]`` log-probabilities."""

    def __init__(self, distribution: ComponentMixture):
        super().__init__()
        if distribution.component_class is None:
            raise ValueError(f"{distribution.name} is unconditional: it has no classes to classify")
        self.distribution = distribution
        self.num_classes = distribution.num_classes

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        dist = self.distribution
        x64, s, _ = dist._prepare(x, sigma, None)
        joint = dist.weights.log()[None] + dist._component_log_prob(x64, s)  # log π_k p_k,σ(x), [B, K]
        member = dist.component_class[None, :] == torch.arange(dist.num_classes)[:, None]  # [C, K]
        per_class = torch.logsumexp(joint[:, None, :].masked_fill(~member[None], -torch.inf), dim=2)
        return (per_class - torch.logsumexp(joint, dim=1, keepdim=True)).to(dtype=x.dtype, device=x.device)
