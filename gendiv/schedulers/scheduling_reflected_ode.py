"""The probability-flow ODE of reflected diffusion, with the boundary mollifier, as a diffusers scheduler."""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from ..reflection import fold, mollifier
from .box_scheduler import BoxSchedulerMixin


class ReflectedODEScheduler(BoxSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Euler on dx = −½ s·m(x) d(σ²), m the mollifier that vanishes at the walls (methods.md §4), then a final denoise.

    The exact p_σ satisfies the Neumann condition, so its flow is tangent to the walls and needs no reflection; the
    mollifier guards against a learned score that is not zero there, and a fold catches the rare discretisation
    overshoot so no sample ever leaves the box. The prior is uniform on the inner box [0.01, 0.99] (unit coordinates).
    With s ≡ 0 the sampler is the identity.
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 5.0, box_low: float = 0.0, box_high: float = 1.0,
                 num_train_timesteps: int = 1000, prediction_type: str = "sample", final_denoise: bool = True,
                 mollifier_sharpness: float = 200.0, prior_margin: float = 0.01):
        if mollifier_sharpness <= 0 or not 0 <= prior_margin < 0.5:
            raise ValueError(f"need mollifier_sharpness > 0 and prior_margin in [0, 0.5), got {mollifier_sharpness}, "
                             f"{prior_margin}")
        self._validate_config(sigma_min, sigma_max, box_low, box_high, num_train_timesteps, prediction_type)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return fold(x, self.box)

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        return self.box.uniform(shape, generator, device, dtype, margin=self.config.prior_margin)

    def _transition(self, x, score, sigma, sigma_next, generator):
        drift = score * mollifier(x, self.box, self.config.mollifier_sharpness)
        return self.project(x + 0.5 * (sigma**2 - sigma_next**2) * drift)
