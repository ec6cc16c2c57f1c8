"""How a pipeline call turns ``guidance_scale`` / ``guider`` into the denoiser it calls each step."""
from __future__ import annotations

from diffusers.guiders.guider_utils import BaseGuidance

from ..condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from .base import Guidance, check_scale
from .cfg import ClassifierFreeGuidance
from .diffusers_guiders import DiffusersGuidance
from .interval import IntervalGuidance


def resolve_guider(denoiser, guidance_scale, guider, labels, batch: int, device, sigma_range: tuple[float, float]):
    """(the denoiser to call, the condition to call it with).

    A guidance-free model (scalar condition ``guidance``) takes the scale as its input: one pass per step, no guider.
    Otherwise ``guider`` (gendiv or diffusers) or CFG at ``guidance_scale`` (1 = the plain model).
    """
    s = check_scale("guidance_scale", guidance_scale)
    cond = None if labels is None else Condition(class_labels=labels)
    if GUIDANCE_SCALAR in (denoiser.config.get("scalar_names") or []):
        if guider is not None:
            raise ValueError("this is a guidance-free (GFT) model: it takes guidance_scale as an input and needs no guider")
        if s < 1:
            raise ValueError(f"a guidance-free model samples at guidance_scale ≥ 1 (β = 1/s in (0, 1]), got {s}")
        return denoiser, with_guidance_scale(cond, s, batch, device)
    if guider is not None:
        if s != 1.0:
            raise ValueError(f"give either guidance_scale ({s}) or a guider, not both: a guider carries its own scale")
        if isinstance(guider, BaseGuidance):
            guider = DiffusersGuidance(denoiser, guider)
        elif not isinstance(guider, (Guidance, IntervalGuidance)):
            raise ValueError(f"guider must be a gendiv guider (gendiv.guidance) or a diffusers guider "
                             f"(diffusers.guiders), got {type(guider).__name__}")
        if isinstance(guider, IntervalGuidance):
            guider.check_schedule(*sigma_range)
        return guider, cond
    if s == 1.0:
        return denoiser, cond
    return ClassifierFreeGuidance(denoiser, s), cond
