"""CFG-aware training ("Bridging the Gap: Addressing Discrepancies in Diffusion Model Training for Classifier-Free
Guidance", Patel et al. 2023; docs/guidance.md, CFG-aware training).

Label dropout trains D(x|c) and D(x|∅) to their own posterior means, so CFG at s > 1 samples the tilted
p(x|c)^s p(x)^(1−s), not the data. CFG-aware training applies the ordinary denoising loss to the prediction the
sampler uses, the CFG combination at the training scale w:

    L = (1 − λ)·L(D(x|c)) + λ·L(D(x|∅) + w·(D(x|c) − D(x|∅))),     L(D) = E λ(σ)‖D(x₀ + σn, σ) − x₀‖²

On label-dropped samples the combination is D(x|∅) itself, so they still train the unconditional model. At λ = 1 the
optimum is D(x|∅) = E[x₀|x], D(x|c) = D(x|∅) + (E[x₀|x, c] − D(x|∅))/w: CFG at s = w returns the data's conditional
denoiser, and CFG at s the exact CFG of the data at s/w. The paper's own equation could not be read (only its
abstract and introduction were reachable); this is the objective its abstract describes, derived and tested here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..condition import Condition
from .denoising import denoising_loss, weighted_denoising_error


@dataclass
class CFGAwareConfig:
    """``objective: cfg_aware`` (section ``cfg_aware``)."""

    scale: float = 2.0    # w: the CFG scale the sampler will use (diffusers' convention, ≥ 1)
    weight: float = 1.0   # λ: share of the CFG-combined loss; 1 − λ stays the plain conditional loss

    def __post_init__(self):
        if not self.scale >= 1:
            raise ValueError(f"cfg_aware.scale must be ≥ 1 (the CFG scale sampled with), got {self.scale}")
        if not 0 <= self.weight <= 1:
            raise ValueError(f"cfg_aware.weight must be in [0, 1], got {self.weight}")


def cfg_aware_loss(model, x0, cond: Condition, scale: float = 2.0, weight: float = 1.0, generator=None,
                   **loss_kwargs) -> torch.Tensor:
    """(1 − λ)·plain loss + λ·loss of the CFG combination at w, both on one draw of σ and noise; the two passes run
    in one batch and both receive gradients (unlike GFT's stop-gradient on the unconditional branch)."""
    if cond is None or cond.class_labels is None:
        raise ValueError("CFG-aware training needs class labels (a class-conditional data source)")
    CFGAwareConfig(scale, weight)  # validates
    seen = {}

    def combined(x, sigma, c):
        pos, neg = model(torch.cat([x, x]), torch.cat([sigma, sigma]), Condition.cat([c, c.with_null()])).chunk(2)
        seen.update(pos=pos, sigma=sigma)
        return neg + scale * (pos - neg)

    per_sample = denoising_loss(combined, x0, cond, generator=generator, reduce=False, **loss_kwargs)
    if weight < 1:
        plain = weighted_denoising_error(seen["pos"], x0, seen["sigma"], loss_kwargs.get("sigma_data", 0.5))
        per_sample = weight * per_sample + (1 - weight) * plain
    return per_sample.mean()
