"""The guider interface: a Denoiser → Denoiser map D_s = D_neg + s·(D_pos − D_neg) (diffusers' convention, s = 1 off).

A guided denoiser holds the denoiser it guides and is itself a denoiser, so it stands wherever one does: samplers,
pipelines, teacher calls in distillation, benchmarks, and other guiders
(``SigmaIntervalGuidedDenoiser(AutoGuidedDenoiser(...))``). Subclasses say what the negative prediction is: the same
network under another condition (CFG's null class, ICG's random class; evaluated in one batch with the positive pass),
or another call (a perturbed time embedding, a second model). Gradient guiders (classifier, training-free) write
their positive prediction as the negative one plus a gradient term. All combinations happen in x̂₀ space; linear ones
equal the ε/v/flow forms (weights sum to 1, docs/guidance.md), the rescale is applied in x̂₀ space.

Naming: ``*GuidedDenoiser`` is a gendiv guider (this interface); ``*Guider`` is a diffusers guider
(``diffusers.guiders.BaseGuidance``, see ``diffusers_guiders``).

Settings save like diffusers' guiders: ``save_pretrained(folder)`` writes ``guider_config.json`` (the scales and
windows, not the networks, which are saved with their pipelines); ``GuidedDenoiser.from_pretrained(folder, denoiser,
**networks)`` rebuilds it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..condition import Condition, as_condition
from ..space import append_dims, as_sigma_batch, sigma_dtype

GUIDER_CONFIG_NAME = "guider_config.json"  # diffusers' file name for guider settings
GUIDERS: dict[str, type] = {}  # class name → class, for from_pretrained


def check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class GuidedDenoiser(nn.Module):
    """Base class. ``guidance_scale`` s; ``guidance_rescale`` φ ∈ [0, 1]: D' = φ·D_s·std(D_pos)/std(D_s) + (1−φ)·D_s
    per sample (Lin et al. 2024), in x̂₀ space.

    ``config_fields``: the constructor's settings that ``guider_config`` saves (networks are not settings).
    """

    config_fields: tuple[str, ...] = ("guidance_scale", "guidance_rescale")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        GUIDERS[cls.__name__] = cls

    def __init__(self, denoiser: nn.Module, guidance_scale: float = 1.0, guidance_rescale: float = 0.0):
        super().__init__()
        self.denoiser = denoiser
        self.guidance_scale = check_scale("guidance_scale", guidance_scale)
        self.guidance_rescale = check_scale("guidance_rescale", guidance_rescale)
        if not 0 <= self.guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")

    @property
    def config(self):
        """The guided network's config (num_classes, sample shape, ...): a guided denoiser stands in for it."""
        return self.denoiser.config

    @property
    def conditional(self) -> nn.Module:
        """The unguided model (what an interval falls back to outside its window)."""
        return self.denoiser.conditional if isinstance(self.denoiser, GuidedDenoiser) else self.denoiser

    # -- settings, saved like diffusers' guider_config.json -------------------------------------------
    @property
    def guider_config(self) -> dict:
        return {"_class_name": type(self).__name__, **{k: getattr(self, k) for k in self.config_fields}}

    def save_pretrained(self, save_directory) -> Path:
        """Write ``guider_config.json`` into ``save_directory`` (atomically: a crash never leaves half a file)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".guider_config.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.guider_config, f, indent=2, sort_keys=True)
        os.replace(tmp, folder / GUIDER_CONFIG_NAME)
        return folder / GUIDER_CONFIG_NAME

    @classmethod
    def from_config(cls, config: dict, denoiser: nn.Module, **networks) -> "GuidedDenoiser":
        """Rebuild a guider from ``guider_config`` (``_class_name`` picks the class when called on the base)."""
        config = dict(config)
        name = config.pop("_class_name", cls.__name__)
        target = GUIDERS.get(name)
        if target is None or not issubclass(target, cls):
            raise ValueError(f"guider config names class {name!r}, which is not a gendiv {cls.__name__}; "
                             f"known: {sorted(k for k, v in GUIDERS.items() if issubclass(v, cls))}")
        return target._from_settings(config, denoiser, networks)

    @classmethod
    def _from_settings(cls, settings: dict, denoiser, networks: dict):
        unknown = sorted(set(settings) - set(cls.config_fields))
        if unknown:
            raise ValueError(f"{cls.__name__} has no setting {unknown[0]!r}; its settings: {list(cls.config_fields)}")
        return cls(denoiser, **networks, **settings)

    @classmethod
    def from_pretrained(cls, folder, denoiser: nn.Module, subfolder: str | None = None, **networks) -> "GuidedDenoiser":
        path = Path(folder) / (subfolder or "") / GUIDER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {GUIDER_CONFIG_NAME} in {path.parent}")
        return cls.from_config(json.loads(path.read_text()), denoiser, **networks)

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


def require_labels(guider: GuidedDenoiser, cond: Condition | None, what: str, allow_text: bool = False):
    """Guidance against a condition needs class labels and a denoiser with a null/other class to move away from
    (``allow_text``: or prompt embeddings and a denoiser with a null-prompt embedding)."""
    if allow_text and guider.config.get("text_embeds_shape") is not None:
        if cond is None or cond.text_embeds is None:
            raise ValueError(f"{what} with guidance_scale={guider.guidance_scale} needs prompt embeddings")
        return
    if guider.config.get("num_classes") is None:
        raise ValueError(f"{what} needs a class-conditional denoiser with a null class (num_classes set; trained with "
                         f"label dropout), but this {type(guider.conditional).__name__} is unconditional; "
                         "use TimestepGuidedDenoiser or AutoGuidedDenoiser for unconditional models")
    if cond is None or cond.class_labels is None:
        raise ValueError(f"{what} with guidance_scale={guider.guidance_scale} needs class labels")


def null_condition(cond: Condition | None, batch: int, device, scalar_names=()) -> Condition:
    """Every sample marked unconditional, with valid placeholder labels (index 0): a network whose class table is
    smaller than the caller's labels still reads only its null entry. Keeps the scalars in ``scalar_names``."""
    scalars = {} if cond is None else {k: v for k, v in cond.scalars.items() if k in scalar_names}
    return Condition(class_labels=torch.zeros(batch, dtype=torch.long, device=device),
                     drop=torch.ones(batch, dtype=torch.bool, device=device), scalars=scalars)
