"""Objectives whose trained model samples guided at one network pass per step (docs/methods.md §5).

GFT (Chen et al. 2025): the conditional model is parameterised as

    D_c(x | c, β) = β·D_s(x | c, β) + (1 − β)·sg[D_s(x | ∅, β = 1)],   β ~ U(β_min, 1)

and D_c is trained with the ordinary denoising loss. Its optimum is D_c = E[x₀ | x, c] for every β, so
D_s(x | c, β) = D_u + (1/β)(D_c − D_u): CFG at s = 1/β, sampled with one pass. β enters the network as diffusers'
guidance input w = s − 1 = 1/β − 1 (``condition.GUIDANCE_SCALAR``). Label-dropped samples see β = 1 in both branches
(the reference code), which trains the unconditional model by self-interpolation.

Model guidance (Tang et al. 2025): the target is shifted by the EMA model's guidance direction,
x₀ + w·sg(D̃(x|c) − D̃(x|∅)). Since D̃ is the model itself at convergence, the fixed point is CFG at s = 1/(1 − w)
(docs/guidance_free.md), for 0 ≤ w < 1. Written as the ordinary loss on D − w·sg(D̃_c − D̃_u), it reuses the
denoising loss unchanged.
"""
from __future__ import annotations

import torch

from ..condition import Condition, with_guidance_scale
from ..space import append_dims
from .denoising import denoising_loss


def draw_beta(batch: int, beta_min: float = 0.0, generator=None, device=None) -> torch.Tensor:
    """β ~ U(β_min, 1], never 0 (β = 0 would be an infinite guidance scale)."""
    u = torch.rand(batch, generator=generator)
    return (1 - (1 - beta_min) * u).to(device)  # 1 − U[0, 1) ∈ (0, 1]


def check_beta(beta: torch.Tensor):
    if ((beta <= 0) | (beta > 1)).any():
        raise ValueError(f"β must lie in (0, 1] (β = 1/guidance_scale), got values {float(beta.min()):g}..{float(beta.max()):g}")


def gft_conditional(model, x, sigma, cond: Condition, beta: torch.Tensor) -> torch.Tensor:
    """D_c = β·D_s(x | c, β) + (1 − β)·sg[D_s(x | ∅, β = 1)]; dropped labels use β = 1 inside the network.

    ∅ is the denoiser's own null: the null class for labels, the stored empty-prompt embedding for text."""
    check_beta(beta)
    if cond is None or (cond.class_labels is None and cond.text_embeds is None):
        raise ValueError("guidance-free training needs class labels or prompt embeddings (a conditional data source)")
    dropped = cond.drop if cond.drop is not None else torch.zeros_like(beta, dtype=torch.bool)
    scale = torch.where(dropped.to(beta.device), torch.ones_like(beta), 1 / beta)
    d_s = model(x, sigma, with_guidance_scale(cond, scale, x.shape[0], x.device))
    null = Condition(cond.class_labels, torch.ones_like(dropped, dtype=torch.bool), dict(cond.scalars), cond.text_embeds)
    was_training = model.training
    model.eval()  # the reference code runs the unconditional branch in eval mode, without grad
    with torch.no_grad():
        d_u = model(x, sigma, with_guidance_scale(null, 1.0, x.shape[0], x.device))
    model.train(was_training)
    b = append_dims(beta.to(d_s.dtype), x.ndim)
    return b * d_s + (1 - b) * d_u


def gft_loss(model, x0, cond: Condition, beta_min: float = 0.0, generator=None, **loss_kwargs) -> torch.Tensor:
    beta = draw_beta(x0.shape[0], beta_min, generator, x0.device)
    return denoising_loss(lambda x, s, c: gft_conditional(model, x, s, c, beta), x0, cond, generator=generator,
                          **loss_kwargs)


def model_guidance_loss(model, ema_model, x0, cond: Condition, scale: float = 1.0, generator=None,
                        **loss_kwargs) -> torch.Tensor:
    """Ordinary loss with target x₀ + w·sg(D̃(x|c) − D̃(x|∅)) on the samples that kept their label."""
    if cond is None or cond.class_labels is None:
        raise ValueError("model-guidance training needs class labels (a class-conditional data source)")
    keep = ~cond.drop if cond.drop is not None else torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)

    def shifted(x, sigma, c):
        with torch.no_grad():
            direction = ema_model(x, sigma, c) - ema_model(x, sigma, c.with_null())
        return model(x, sigma, c) - scale * append_dims(keep.to(x.dtype), x.ndim) * direction

    return denoising_loss(shifted, x0, cond, generator=generator, **loss_kwargs)
