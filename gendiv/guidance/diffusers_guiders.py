"""diffusers interop (``diffusers.guiders``, 0.42.1).

``DiffusersGuidance`` runs a stock diffusers guider over a gendiv denoiser, so gendiv's pipelines take e.g.
``AdaptiveProjectedGuidance`` or ``ClassifierFreeZeroStarGuidance``: the guider's conditional/unconditional inputs are
the class labels and the null flag, its predictions are x̂₀ (so non-linear guiders such as APG act in x̂₀ space), and
the pipeline calls ``set_state`` each step. Guiders that hook layers of a transformer by name (PAG, SLG, SEG,
diffusers' AutoGuidance) do not fit gendiv's UNets and are refused.

``SigmaIntervalGuider`` and ``IndependentConditionGuider`` are gendiv's σ-interval guidance and ICG as diffusers guiders
(subclasses of diffusers' ``ClassifierFreeGuidance``), usable in diffusers' modular pipelines and saved as
``guider_config.json``. Autoguidance with a second model has no diffusers-guider form: a guider never chooses which
network the pipeline calls; use :class:`~gendiv.guidance.AutoGuidance`.
"""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import ClassifierFreeGuidance as DiffusersCFG
from diffusers.guiders.guider_utils import BaseGuidance
from torch import nn

from ..condition import Condition, as_condition
from ..space import as_sigma_batch, sigma_dtype

LAYER_HOOK_GUIDERS = ("PerturbedAttentionGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance", "AutoGuidance")
TIMESTEP_FORMATS = ("edm", "sigma")


class DiffusersGuidance(nn.Module):
    """A diffusers ``BaseGuidance`` as a gendiv denoiser over ``denoiser`` (class-conditional, with a null class)."""

    def __init__(self, denoiser: nn.Module, guider: BaseGuidance):
        super().__init__()
        if not isinstance(guider, BaseGuidance):
            raise ValueError(f"expected a diffusers guider (diffusers.guiders.BaseGuidance), got {type(guider).__name__}")
        if type(guider).__name__ in LAYER_HOOK_GUIDERS:
            raise ValueError(f"diffusers' {type(guider).__name__} hooks transformer layers by name, which gendiv's "
                             "denoisers do not have; use a guider that combines predictions (CFG, APG, CFG-Zero*, ...) "
                             "or gendiv's own AutoGuidance/TimestepGuidance")
        if denoiser.config.get("num_classes") is None:
            raise ValueError(f"a diffusers guider needs a class-conditional denoiser with a null class; this "
                             f"{type(denoiser).__name__} is unconditional")
        self.denoiser, self.guider = denoiser, guider

    @property
    def config(self):
        return self.denoiser.config

    def set_state(self, step: int, num_inference_steps: int, timestep):
        self.guider.set_state(step=step, num_inference_steps=num_inference_steps, timestep=timestep)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        if cond is None or cond.class_labels is None:
            raise ValueError("a diffusers guider needs class labels (its conditional input)")
        if self.guider._step is None:  # called outside a pipeline loop (e.g. a teacher call): one fixed state
            self.set_state(0, 1, sigma)
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        labels = cond.class_labels
        data = {"class_labels": (labels, labels),
                "drop": (torch.zeros_like(labels, dtype=torch.bool), torch.ones_like(labels, dtype=torch.bool))}
        batches = self.guider.prepare_inputs(data)
        for batch in batches:
            self.guider.prepare_models(self.denoiser)
            batch.noise_pred = self.denoiser(x, sigma, Condition(class_labels=batch.class_labels, drop=batch.drop,
                                                                 scalars=dict(cond.scalars)))
            self.guider.cleanup_models(self.denoiser)
        out = self.guider(batches).pred
        return (out, None) if return_features else out


def _sigma_of(timestep, timestep_format: str) -> float:
    t = float(torch.as_tensor(timestep).flatten()[0])
    return math.exp(4 * t) if timestep_format == "edm" else t


class SigmaIntervalGuider(DiffusersCFG):
    """CFG only while σ lies in (sigma_lo, sigma_hi] (guidance intervals, methods.md §5), as a diffusers guider.

    ``timestep_format``: how σ is read from the pipeline's timestep: ``"edm"`` (diffusers' EDM schedulers pass
    c_noise = ln(σ)/4) or ``"sigma"`` (the timestep is σ, as in gendiv's box schedulers).
    """

    @register_to_config
    def __init__(self, guidance_scale: float = 2.0, sigma_lo: float = 0.28, sigma_hi: float = 5.42,
                 timestep_format: str = "edm", guidance_rescale: float = 0.0, use_original_formulation: bool = False,
                 start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        if not 0 <= sigma_lo < sigma_hi:
            raise ValueError(f"the guidance window needs 0 ≤ sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi}]")
        if timestep_format not in TIMESTEP_FORMATS:
            raise ValueError(f"timestep_format must be one of {TIMESTEP_FORMATS}, got {timestep_format!r}")
        super().__init__(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled)

    def _is_cfg_enabled(self) -> bool:
        if not super()._is_cfg_enabled() or getattr(self, "_timestep", None) is None:
            return super()._is_cfg_enabled()
        sigma = _sigma_of(self._timestep, self.config.timestep_format)
        return self.config.sigma_lo < sigma <= self.config.sigma_hi


class IndependentConditionGuider(DiffusersCFG):
    """ICG as a diffusers guider: the negative inputs are conditions independent of x, whatever the pipeline passed as
    unconditional: integer/bool inputs (class labels, null flags) are the batch's own, permuted; float inputs (prompt
    embeddings) are Gaussian with the conditional embedding's mean and std (the paper's matched-scale variant)."""

    @register_to_config
    def __init__(self, guidance_scale: float = 2.0, guidance_rescale: float = 0.0, seed: int = 0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        super().__init__(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled)
        self._generator = torch.Generator().manual_seed(seed)

    def prepare_inputs(self, data):
        independent = {}
        for key, value in data.items():
            if isinstance(value, tuple) and torch.is_tensor(value[0]):
                cond = value[0]
                if cond.is_floating_point():
                    noise = torch.randn(cond.shape, generator=self._generator).to(cond.device, cond.dtype)
                    neg = cond.mean() + cond.std() * noise
                elif key == "drop":
                    neg = torch.zeros_like(cond)
                else:
                    neg = cond[torch.randperm(cond.shape[0], generator=self._generator).to(cond.device)]
                value = (cond, neg)
            independent[key] = value
        return super().prepare_inputs(independent)
