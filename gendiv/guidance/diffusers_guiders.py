"""diffusers interop (``diffusers.guiders``, 0.42.1).

``DiffusersGuidedDenoiser`` runs a stock diffusers guider over a gendiv denoiser, so gendiv's pipelines take e.g.
``AdaptiveProjectedGuidance`` or ``ClassifierFreeZeroStarGuidance``: the guider's conditional/unconditional inputs are
the class labels and the null flag, its predictions are x̂₀ (so non-linear guiders such as APG act in x̂₀ space), and
the pipeline calls ``set_state`` each step. Guiders that hook layers of a transformer by name (PAG, SLG, SEG,
diffusers' AutoGuidance) do not fit gendiv's UNets and are refused.

``SigmaIntervalGuider`` and ``IndependentConditionGuider`` are gendiv's σ-interval guidance and ICG as diffusers guiders
(subclasses of diffusers' ``ClassifierFreeGuidance``), usable in diffusers' modular pipelines and saved as
``guider_config.json``. Guidance by a second model (autoguidance, an unconditional prior) or by a gradient (classifier,
training-free guidance) has no diffusers-guider form: a diffusers guider only combines the predictions a pipeline made,
it never chooses the network nor sees x.
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import ClassifierFreeGuidance as DiffusersCFG
from diffusers.guiders.guider_utils import BaseGuidance
from torch import nn

from ..condition import Condition, as_condition
from ..space import as_sigma_batch, sigma_dtype
from .interval import check_window, in_window

LAYER_HOOK_GUIDERS = ("PerturbedAttentionGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance", "AutoGuidance")
TIMESTEP_FORMATS = ("edm", "sigma")


class DiffusersGuidedDenoiser(nn.Module):
    """A diffusers ``BaseGuidance`` as a gendiv denoiser over ``denoiser`` (class-conditional, with a null class)."""

    def __init__(self, denoiser: nn.Module, guider: BaseGuidance):
        super().__init__()
        if not isinstance(guider, BaseGuidance):
            raise ValueError(f"expected a diffusers guider (diffusers.guiders.BaseGuidance), got {type(guider).__name__}")
        if type(guider).__name__ in LAYER_HOOK_GUIDERS:
            raise ValueError(f"diffusers' {type(guider).__name__} hooks transformer layers by name, which gendiv's "
                             "denoisers do not have; use a guider that combines predictions (CFG, APG, CFG-Zero*, ...) "
                             "or gendiv's own AutoGuidedDenoiser/TimestepGuidedDenoiser")
        if denoiser.config.get("num_classes") is None:
            raise ValueError(f"a diffusers guider needs a class-conditional denoiser with a null class; this "
                             f"{type(denoiser).__name__} is unconditional")
        self.denoiser, self.guider = denoiser, guider
        if isinstance(guider, IndependentConditionGuider):
            guider.default_num_classes = denoiser.config.get("num_classes")  # its config's num_classes comes first

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
        if isinstance(self.guider, SigmaIntervalGuider):
            if not bool((sigma == sigma[0]).all()):
                raise ValueError("a diffusers guider keeps one state per call, but this batch mixes σ values (a "
                                 "training-time teacher call): use SigmaIntervalGuidedDenoiser, which decides per sample")
            self.guider.set_sigma(sigma[0])  # the caller's own σ, not one rebuilt from the timestep
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


def sigma_of_timestep(timestep, timestep_format: str) -> torch.Tensor:
    """σ as a guider reads it from a pipeline's timestep: ``edm`` c_noise = ln(σ)/4, ``sigma`` the timestep itself."""
    t = torch.as_tensor(timestep).to(torch.float64)
    return torch.exp(4 * t) if timestep_format == "edm" else t


class SigmaIntervalGuider(DiffusersCFG):
    """CFG only while σ lies in (sigma_lo, sigma_hi] (guidance intervals, docs/methods.md §5), as a diffusers guider.

    ``timestep_format``: how σ is read from the pipeline's timestep: ``"edm"`` (diffusers' EDM schedulers pass
    c_noise = ln(σ)/4) or ``"sigma"`` (the timestep is σ, as in gendiv's box schedulers). gendiv's pipelines refuse a
    format that does not reproduce their scheduler's σ, and hand the guider that σ itself (``set_sigma``).
    """

    @register_to_config
    def __init__(self, guidance_scale: float = 2.0, sigma_lo: float = 0.28, sigma_hi: float = 5.42,
                 timestep_format: str = "edm", guidance_rescale: float = 0.0, use_original_formulation: bool = False,
                 start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        check_window(sigma_lo, sigma_hi)
        if timestep_format not in TIMESTEP_FORMATS:
            raise ValueError(f"timestep_format must be one of {TIMESTEP_FORMATS}, got {timestep_format!r}")
        super().__init__(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                         use_original_formulation=use_original_formulation, start=start, stop=stop, enabled=enabled)
        self._sigma = None

    def set_state(self, step: int, num_inference_steps: int, timestep) -> None:
        super().set_state(step, num_inference_steps, timestep)
        self._sigma = None  # a new step: read σ from its timestep unless the caller sets it

    def set_sigma(self, sigma) -> None:
        self._sigma = torch.as_tensor(sigma).to(torch.float64).flatten()[0]

    def current_sigma(self):
        if self._sigma is not None:
            return self._sigma
        timestep = getattr(self, "_timestep", None)
        return None if timestep is None else sigma_of_timestep(timestep, self.config.timestep_format).flatten()[0]

    def check_schedule(self, timesteps: torch.Tensor, step_sigmas: torch.Tensor):
        """The σ this guider reads from ``timesteps`` must be the schedule's own, and the window must hold one of them."""
        read = sigma_of_timestep(timesteps, self.config.timestep_format)
        true = torch.as_tensor(step_sigmas).to(torch.float64)
        if not torch.allclose(read, true, rtol=1e-4, atol=1e-8):
            fits = [f for f in TIMESTEP_FORMATS
                    if torch.allclose(sigma_of_timestep(timesteps, f), true, rtol=1e-4, atol=1e-8)]
            hint = f"use timestep_format={fits[0]!r}" if fits else "its timesteps are neither c_noise nor σ"
            raise ValueError(f"SigmaIntervalGuider(timestep_format={self.config.timestep_format!r}) reads σ = "
                             f"{float(read[0]):.4g} from this pipeline's first timestep, whose σ is "
                             f"{float(true[0]):.4g}: "
                             f"its window would be checked against the wrong σ; {hint}")
        if not bool(in_window(true, self.config.sigma_lo, self.config.sigma_hi).any()):
            raise ValueError(f"guidance window ({self.config.sigma_lo:g}, {self.config.sigma_hi:g}] holds none of the "
                             f"schedule's σ values [{float(true.min()):g}, {float(true.max()):g}]: it would never apply")

    def _is_cfg_enabled(self) -> bool:
        sigma = self.current_sigma()
        if not super()._is_cfg_enabled() or sigma is None:
            return super()._is_cfg_enabled()
        return bool(in_window(sigma, self.config.sigma_lo, self.config.sigma_hi))


class IndependentConditionGuider(DiffusersCFG):
    """ICG as a diffusers guider: the negative inputs are conditions drawn independently of x, whatever the pipeline
    passed as unconditional: class labels uniform over ``num_classes`` (in gendiv's pipelines, the denoiser's when
    unset), null flags off, float inputs (prompt embeddings) Gaussian with the conditional embedding's mean and std
    (the paper's matched-scale variant)."""

    @register_to_config
    def __init__(self, guidance_scale: float = 2.0, guidance_rescale: float = 0.0, seed: int = 0,
                 num_classes: int | None = None, use_original_formulation: bool = False, start: float = 0.0,
                 stop: float = 1.0, enabled: bool = True):
        bad = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        if num_classes is not None and bad:
            raise ValueError(f"num_classes must be an integer ≥ 2 (the label range to draw from), got {num_classes!r}")
        super().__init__(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                         use_original_formulation=use_original_formulation, start=start, stop=stop, enabled=enabled)
        self._generator = torch.Generator().manual_seed(seed)
        self.default_num_classes = None

    def _independent(self, key: str, cond: torch.Tensor) -> torch.Tensor:
        if cond.is_floating_point():
            noise = torch.randn(cond.shape, generator=self._generator).to(cond.device, cond.dtype)
            return cond.mean() + cond.std() * noise
        if cond.dtype == torch.bool or key == "drop":
            return torch.zeros_like(cond)
        n = self.config.num_classes or self.default_num_classes
        if n is None:
            raise ValueError(f"IndependentConditionGuider draws independent labels for {key!r} and needs their range: "
                             "give num_classes=")
        return torch.randint(0, n, cond.shape, generator=self._generator).to(cond.device, cond.dtype)

    def prepare_inputs(self, data):
        independent = {}
        for key, value in data.items():
            if isinstance(value, tuple) and torch.is_tensor(value[0]):
                value = (value[0], self._independent(key, value[0]))
            independent[key] = value
        return super().prepare_inputs(independent)
