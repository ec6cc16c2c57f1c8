"""The probability-flow ODE of reflected diffusion, with the boundary mollifier, as a diffusers scheduler."""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from ..reflection import fold, mollifier
from .box_scheduler import BoxSchedulerMixin


class ReflectedODEScheduler(BoxSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Euler on the probability flow dx = −½ s d(σ²) (docs/methods.md §4), then a final denoise.

    The exact p_σ satisfies the Neumann condition, so its flow is tangent to the walls and needs no reflection; a fold
    catches the rare discretisation overshoot so no sample ever leaves the box. The prior is uniform on the whole box
    (the reflected kernel at σ_max = 5 is uniform to 1e-53). With the exact score the samples converge to the target
    as steps grow (tests/test_reflected.py: KS 5e-3 at 300 steps, 6e-4 at 2000 on a cosine density). With s ≡ 0 the
    sampler is the identity.

    Two options of the reference code bias the result and are off by default: ``prior_margin`` draws the prior on the
    inner box [m, 1 − m] (reference: 0.01), and ``mollifier_sharpness`` multiplies the drift by a bump m(x) that
    vanishes at the walls (reference: 200), a guard against a learned score that pushes through them. Together they
    stall the cosine target at KS 0.013 for any step count.
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 5.0, box_low: float = 0.0, box_high: float = 1.0,
                 num_train_timesteps: int = 1000, prediction_type: str = "sample", final_denoise: bool = True,
                 mollifier_sharpness: float | None = None, prior_margin: float = 0.0):
        if (mollifier_sharpness is not None and mollifier_sharpness <= 0) or not 0 <= prior_margin < 0.5:
            raise ValueError(f"need mollifier_sharpness > 0 and prior_margin in [0, 0.5), got {mollifier_sharpness}, "
                             f"{prior_margin}")
        self._validate_config(sigma_min, sigma_max, box_low, box_high, num_train_timesteps, prediction_type)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return fold(x, self.box)

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        return self.box.uniform(shape, generator, device, dtype, margin=self.config.prior_margin)

    def _transition(self, x, score, sigma, sigma_next, generator):
        sharpness = self.config.mollifier_sharpness
        drift = score if sharpness is None else score * mollifier(x, self.box, sharpness)
        return self.project(x + 0.5 * (sigma**2 - sigma_next**2) * drift)
