"""The guider interface: a Denoiser → Denoiser map D_s = D_neg + s·(D_pos − D_neg) (diffusers' convention, s = 1 off).

A guider holds the denoiser it guides and is itself a denoiser, so it stands wherever one does: samplers, pipelines,
teacher calls in distillation, benchmarks, and other guiders (``IntervalGuidance(AutoGuidance(...))``). Subclasses
say what the negative prediction is: the same network under another condition (CFG's null class, ICG's random
class; evaluated in one batch with the positive pass), or another call (a perturbed time embedding, a second model).
All combinations happen in x̂₀ space; linear ones equal the ε/v/flow forms (weights sum to 1, methods.md §0), the
rescale is applied in x̂₀ space.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..condition import Condition, as_condition
from ..space import append_dims, as_sigma_batch, sigma_dtype


def check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class Guidance(nn.Module):
    """Base class. ``guidance_scale`` s; ``guidance_rescale`` φ ∈ [0, 1]: D' = φ·D_s·std(D_pos)/std(D_s) + (1−φ)·D_s
    per sample (Lin et al. 2024), in x̂₀ space."""

    def __init__(self, denoiser: nn.Module, guidance_scale: float = 1.0, guidance_rescale: float = 0.0):
        super().__init__()
        self.denoiser = denoiser
        self.guidance_scale = check_scale("guidance_scale", guidance_scale)
        self.guidance_rescale = check_scale("guidance_rescale", guidance_rescale)
        if not 0 <= self.guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")

    @property
    def config(self):
        return self.denoiser.config

    @property
    def conditional(self) -> nn.Module:
        """The unguided model (what an interval falls back to outside its window)."""
        return self.denoiser.conditional if isinstance(self.denoiser, Guidance) else self.denoiser

    # -- what subclasses define ----------------------------------------------------------------
    def negative_condition(self, cond: Condition | None, batch: int, device) -> Condition | None:
        """The condition of a negative pass through the same network (batched with the positive one), or raise
        NotImplementedError to use :meth:`negative` instead."""
        raise NotImplementedError

    def negative(self, x, sigma, cond):
        """The negative prediction by any other means (override when there is no batched negative condition)."""
        raise NotImplementedError

    def is_off(self, cond) -> bool:
        return self.guidance_scale == 1.0

    # -- shared ---------------------------------------------------------------------------------
    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        if self.is_off(cond):
            return self.denoiser(x, sigma, cond, return_features=return_features)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        feats = None
        try:
            neg_cond = self.negative_condition(cond, x.shape[0], x.device)
        except NotImplementedError:
            out = self.denoiser(x, sigma, cond, return_features=return_features)
            pos, feats = out if return_features else (out, None)
            neg = self.negative(x, sigma, cond)
        else:
            both = Condition.cat([cond, neg_cond]) if cond is not None else None
            out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both, return_features=return_features)
            d, feats = out if return_features else (out, None)
            pos, neg = d.chunk(2)
            feats = None if feats is None else feats.chunk(2)[0]
        guided = self.combine(pos, neg)
        return (guided, feats) if return_features else guided

    def combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        guided = neg + self.guidance_scale * (pos - neg)
        if self.guidance_rescale > 0:
            std = lambda t: t.flatten(1).std(1).clamp_min(1e-12)  # noqa: E731
            rescaled = guided * append_dims(std(pos) / std(guided), guided.ndim)
            guided = self.guidance_rescale * rescaled + (1 - self.guidance_rescale) * guided
        return guided


def require_labels(guider: Guidance, cond: Condition | None, what: str, allow_text: bool = False):
    """Guidance against a condition needs class labels and a denoiser with a null/other class to move away from
    (``allow_text``: or prompt embeddings and a denoiser with a null-prompt embedding)."""
    if allow_text and guider.config.get("text_embeds_shape") is not None:
        if cond is None or cond.text_embeds is None:
            raise ValueError(f"{what} with guidance_scale={guider.guidance_scale} needs prompt embeddings")
        return
    if guider.config.get("num_classes") is None:
        raise ValueError(f"{what} needs a class-conditional denoiser with a null class (num_classes set; trained with "
                         f"label dropout), but this {type(guider.conditional).__name__} is unconditional; "
                         "use TimestepGuidance or AutoGuidance for unconditional models")
    if cond is None or cond.class_labels is None:
        raise ValueError(f"{what} with guidance_scale={guider.guidance_scale} needs class labels")
