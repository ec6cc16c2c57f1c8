"""The thresholding baseline: the reverse VE SDE of an ordinary (unreflected) model, clipped to the box each step."""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from .box_scheduler import BoxSchedulerMixin


class ThresholdedSDEScheduler(BoxSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Euler–Maruyama on the reverse VE SDE with static thresholding (clamp into the box after every step).

    This is what a standard diffusion model does on bounded data; it discretises the reflected SDE only in the limit
    of many steps (O(√Δt)) and piles an atom of mass on the walls meanwhile. It is here for comparison
    (eval/bench.py ``reflected``). The prior is N(centre, σ_max²) clamped into the box.
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 5.0, box_low: float = 0.0, box_high: float = 1.0,
                 num_train_timesteps: int = 1000, prediction_type: str = "sample", final_denoise: bool = True):
        self._validate_config(sigma_min, sigma_max, box_low, box_high, num_train_timesteps, prediction_type)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.box.clamp(x)

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        centre = 0.5 * (self.config.box_low + self.config.box_high)
        z = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        return self.project(centre + self.config.sigma_max * z)

    def _transition(self, x, score, sigma, sigma_next, generator):
        return self._euler_maruyama(x, score, sigma, sigma_next, generator)
