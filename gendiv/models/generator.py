"""One-step generator G(z, cond) = D_θ(σ_init·z, σ_init, cond): a denoiser evaluated at one fixed σ.

Initialising θ from the teacher (DMD2, SiD) makes G start as the teacher's one-step x̂₀ prediction.
"""
from __future__ import annotations

import copy

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .denoiser import build_denoiser, sample_shape

# a flow-map student's scalar condition r = s/σ (MeanFlow, gendiv/distill/mean_flow.py): its pass at σ jumps to s = rσ
FLOW_MAP_RATIO = "flow_map_r"


class OneStepGenerator(ModelMixin, ConfigMixin):
    """Args:
        backbone_class: ``"UNetDenoiser"`` or ``"MLPDenoiser"``; backbone_config: its config.
        sigma_init: σ at which the backbone is evaluated; z ~ N(0, I) is scaled by it (80 for DMD2, 2.5 for SiD).
        sampling_sigmas: a few-step student's σ grid, [σ_init, σ₁, …] (step k re-noises the last x̂₀ to σ_k and
            denoises); None for a one-step student. ``FewStepPipeline`` reads it.
    """

    @register_to_config
    def __init__(self, backbone_class: str = "MLPDenoiser", backbone_config: dict | None = None, sigma_init: float = 80.0,
                 sampling_sigmas: list | None = None):
        super().__init__()
        self.backbone = build_denoiser(backbone_class, dict(backbone_config or {}))

    @classmethod
    def from_denoiser(cls, denoiser, sigma_init: float = 80.0) -> "OneStepGenerator":
        """A generator whose backbone starts as a copy of ``denoiser`` (weights included)."""
        gen = cls(backbone_class=type(denoiser).__name__, backbone_config=dict(denoiser.config), sigma_init=sigma_init)
        gen.backbone.load_state_dict(copy.deepcopy(denoiser.state_dict()))
        return gen

    def sample_shape(self, batch: int) -> tuple:
        return sample_shape(self.backbone, batch)

    @property
    def num_classes(self):
        return self.backbone.config.num_classes

    def forward(self, z: torch.Tensor, cond=None, return_features: bool = False, sigma=None):
        """G(z) = D_θ(σ_init·z, σ_init); with ``sigma`` the backbone at that σ on a noisy point instead,
        D_θ(z, σ) (multi-step students, consistency functions), called through the same (DDP) wrapper."""
        if sigma is not None:
            return self.backbone(z, sigma, cond, return_features=return_features)
        return self.backbone(z * self.config.sigma_init, self.config.sigma_init, cond, return_features=return_features)
