"""The reflected reverse SDE on a box (Lou & Ermon 2023, docs/methods.md §4) as a diffusers scheduler."""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from ..reflection import fold
from .box_scheduler import BoxSchedulerMixin


class ReflectedSDEScheduler(BoxSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Euler–Maruyama on the reverse VE SDE, folded back into the box after every step; optional reflected Langevin
    corrector (``step_correct``); a final Tweedie-form denoise x + σ_min²·s that is really applied.

    From σ to σ' < σ the reverse step integrates g² dt = d(σ²):  x ← fold(x + (σ² − σ'²)·s + √(σ² − σ'²)·z).
    With s ≡ 0 this is folded Brownian motion, which is exact at any step count (uniform data stays uniform).

    Args:
        sigma_min, sigma_max: the schedule σ(t) = σ_min (σ_max/σ_min)^t (images: 0.01 and 5).
        box_low, box_high: the domain [box_low, box_high]^d.
        num_train_timesteps: default number of steps before ``set_timesteps``.
        prediction_type: ``"sample"`` (the denoiser's D; s = (D − x)/σ²) or ``"score"``.
        final_denoise: apply x + σ_min²·s at the last step (the reference sampler skipped it).
        corrector_steps: reflected Langevin corrector steps per σ (the pipeline runs them; 0 = predictor only).
        corrector_snr: Langevin step size ε = min(2(snr·‖z‖/‖s‖)², σ²), norms averaged over the batch.
    """

    @register_to_config
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 5.0, box_low: float = 0.0, box_high: float = 1.0,
                 num_train_timesteps: int = 1000, prediction_type: str = "sample", final_denoise: bool = True,
                 corrector_steps: int = 0, corrector_snr: float = 0.16):
        if corrector_steps < 0 or corrector_snr <= 0:
            raise ValueError(f"need corrector_steps ≥ 0 and corrector_snr > 0, got {corrector_steps}, {corrector_snr}")
        self._validate_config(sigma_min, sigma_max, box_low, box_high, num_train_timesteps, prediction_type)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return fold(x, self.box)

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """The reflected kernel at σ_max = 5 is uniform on the box to within 2e^{−π²σ²/2} ≈ 1e-53."""
        return self.box.uniform(shape, generator, device, dtype)

    def _transition(self, x, score, sigma, sigma_next, generator):
        return self._euler_maruyama(x, score, sigma, sigma_next, generator)

    def step_correct(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One reflected Langevin step at the current σ: x ← fold(x + ε s + √(2ε) z), ε = min(2(snr·‖z‖/‖s‖)², σ²).

        The norms are batch means (Song et al. 2021, Algorithm 5): a per-sample ratio explodes wherever the score
        vanishes (every sample at σ_max, and the modes), and the cap σ² (the step a score of curvature 1/σ² allows)
        bounds the step where the whole batch sees a flat density: uncapped, ε reached 1e23 on uniform data and the
        fold of x + √(2ε)z rounded every value to a wall (KS 0.98 against the uniform truth).
        """
        sigma = self.sigmas[self.step_index(timestep)].to(sample.device)
        score = self.model_score(model_output, sample, sigma)
        z = self._noise_like(sample, generator)
        ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
        eps = torch.minimum(2 * (self.config.corrector_snr * ratio) ** 2, sigma**2)
        return self.project(sample + eps * score + (2 * eps).sqrt() * z)
