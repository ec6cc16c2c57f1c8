"""How a pipeline call turns ``guidance_scale`` / ``guider`` into the denoiser it calls each step."""
from __future__ import annotations

import torch
from diffusers.guiders.guider_utils import BaseGuidance

from ..condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from .base import GuidedDenoiser, check_scale
from .cfg import ClassifierFreeGuidedDenoiser
from .diffusers_guiders import DiffusersGuidedDenoiser, SigmaIntervalGuider
from .interval import SigmaIntervalGuidedDenoiser


def target_classes(denoiser, guider=None) -> int | None:
    """The class labels a pipeline may draw or accept: the model's, or for an unconditional model guided toward a
    class (classifier, training-free guidance) the guide's."""
    if denoiser.config.get("num_classes") is not None or not isinstance(guider, torch.nn.Module):
        return denoiser.config.get("num_classes")
    return next((m.target_classes for m in guider.modules() if getattr(m, "target_classes", None)), None)


def schedule_sigmas(scheduler) -> torch.Tensor:
    """The σ of each step, read from the scheduler's own ``sigmas`` (never rebuilt from timesteps), after
    ``set_timesteps``: one per timestep (EDM schedulers append a final 0 that no step evaluates)."""
    if getattr(scheduler, "sigmas", None) is None or getattr(scheduler, "timesteps", None) is None:
        raise ValueError("call scheduler.set_timesteps(...) before resolving the guider (its σ values are needed)")
    return scheduler.sigmas[: len(scheduler.timesteps)]


def check_guider_schedule(guider, scheduler):
    """Every window must meet the pipeline's σ schedule, and a diffusers σ guider must read that schedule's σ."""
    sigmas = schedule_sigmas(scheduler)
    for module in guider.modules() if isinstance(guider, torch.nn.Module) else [guider]:
        if isinstance(module, SigmaIntervalGuidedDenoiser):
            module.check_schedule(sigmas)
        if isinstance(module, DiffusersGuidedDenoiser) and isinstance(module.guider, SigmaIntervalGuider):
            module.guider.check_schedule(scheduler.timesteps, sigmas)
        if getattr(module, "recurrence", 1) > 1:
            raise ValueError(f"{type(module).__name__}(recurrence={module.recurrence}) re-noises and repeats each step "
                             "(time travel), which a scheduler's step cannot do; sample it with "
                             "gendiv.guidance.sample_time_travel, or use recurrence=1 in a pipeline")


def resolve_guider(denoiser, guidance_scale, guider, labels, batch: int, device, scheduler):
    """(the denoiser to call, the condition to call it with); ``scheduler`` has its timesteps set.

    A guidance-free model (scalar condition ``guidance``) takes the scale as its input: one pass per step, no guider.
    Otherwise ``guider`` (gendiv or diffusers) or CFG at ``guidance_scale`` (1 = the plain model).
    """
    s = check_scale("guidance_scale", guidance_scale)
    cond = None if labels is None else Condition(class_labels=labels)
    if GUIDANCE_SCALAR in (denoiser.config.get("scalar_names") or []):
        if guider is not None:
            raise ValueError("this is a guidance-free (GFT) model: it takes guidance_scale as an input and needs no "
                             "guider")
        if s < 1:
            raise ValueError(f"a guidance-free model samples at guidance_scale ≥ 1 (β = 1/s in (0, 1]), got {s}")
        return denoiser, with_guidance_scale(cond, s, batch, device)
    if guider is not None:
        if s != 1.0:
            raise ValueError(f"give either guidance_scale ({s}) or a guider, not both: a guider carries its own scale")
        if isinstance(guider, BaseGuidance):
            guider = DiffusersGuidedDenoiser(denoiser, guider)
        elif not isinstance(guider, GuidedDenoiser):
            raise ValueError(f"guider must be a gendiv guider (gendiv.guidance) or a diffusers guider "
                             f"(diffusers.guiders), got {type(guider).__name__}")
        check_guider_schedule(guider, scheduler)
        return guider, cond
    if s == 1.0:
        return denoiser, cond
    return ClassifierFreeGuidedDenoiser(denoiser, s), cond
