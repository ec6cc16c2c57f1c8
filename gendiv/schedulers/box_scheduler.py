"""What gendiv's samplers on a box share: the geometric σ grid, the model output → score conversion, the step
bookkeeping and the final denoise. Each concrete scheduler (one per file) supplies its transition and projection.

Timesteps are the σ values themselves (decreasing from σ_max to σ_min): a gendiv denoiser takes σ, so the pipeline
passes ``t`` straight to it. ``model_output`` is the denoiser's D(x, σ) (``prediction_type="sample"``), from which
the score is (D − x)/σ², or the score itself (``prediction_type="score"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..reflection import Box, reflected_sigma

PREDICTION_TYPES = ("sample", "score")


@dataclass
class BoxSchedulerOutput(BaseOutput):
    """``prev_sample``: x at the next σ (the final, denoised sample after the last step). ``pred_original_sample``:
    the current one-step estimate x + σ²·s, clamped into the box (a preview)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class BoxSchedulerMixin:
    """Shared logic; subclasses define ``_transition(x, score, σ, σ_next, generator)``, ``project`` and ``prior_sample``."""

    order = 1
    init_noise_sigma = 1.0  # the prior is drawn by prior_sample, already at its scale
    # same config fields, σ-valued timesteps: any of them runs a saved box pipeline (``from_config``)
    _compatibles = ["ReflectedSDEScheduler", "ReflectedODEScheduler", "ThresholdedSDEScheduler"]

    @classmethod
    def _get_compatibles(cls):
        """diffusers looks ``_compatibles`` up in its own namespace only; gendiv's box schedulers live in ours."""
        from .. import schedulers

        return [getattr(schedulers, name) for name in cls._compatibles]

    def _validate_config(self, sigma_min, sigma_max, box_low, box_high, num_train_timesteps, prediction_type):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        Box(box_low, box_high)  # raises on b ≤ a
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be ≥ 1, got {num_train_timesteps}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
        self.timesteps = self.sigmas = None
        self.num_inference_steps = None
        self.set_timesteps(num_train_timesteps)

    @property
    def box(self) -> Box:
        return Box(self.config.box_low, self.config.box_high)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas=None, timesteps=None):
        """σ_i = σ(t_i), t_i = linspace(1, 0, N): N model calls, the last one at σ_min for the final denoise.

        ``sigmas`` (or ``timesteps``, the same thing here: timesteps are σ values) sets a custom decreasing grid
        instead, as diffusers' ``retrieve_timesteps`` passes it; the last σ is where the final denoise happens.
        """
        grid = _custom_grid(num_inference_steps, sigmas, timesteps)
        if grid is None:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
            t = torch.linspace(1, 0, num_inference_steps, dtype=torch.float64) if num_inference_steps > 1 \
                else torch.zeros(1, dtype=torch.float64)
            grid = reflected_sigma(t, self.config.sigma_min, self.config.sigma_max)
        self.sigmas = grid.float().to(device)
        self.timesteps = self.sigmas.clone()
        self.num_inference_steps = len(self.sigmas)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step_index(self, timestep) -> int:
        t = torch.as_tensor(timestep, dtype=self.timesteps.dtype, device=self.timesteps.device)
        return int((self.timesteps - t).abs().argmin())

    def model_score(self, model_output: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
        if self.config.prediction_type == "score":
            return model_output
        return (model_output - sample) / sigma**2

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process at σ = ``timesteps`` (one per sample or one for all), projected into the box."""
        sigma = torch.as_tensor(timesteps, dtype=original_samples.dtype, device=original_samples.device)
        sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - sigma.ndim)) if sigma.ndim else sigma
        return self.project(original_samples + sigma * noise)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One reverse step from σ_i = ``timestep`` to σ_{i+1}; at the last σ (σ_min) the final denoise x + σ_min²·s.

        The final denoise is returned as ``prev_sample`` (the reference sampler computed it and discarded it, leaving
        σ_min noise in every sample); ``final_denoise=False`` keeps the noisy sample, for comparison only.
        """
        i = self.step_index(timestep)
        sigma = self.sigmas[i].to(sample.device)
        score = self.model_score(model_output, sample, sigma)
        denoised = self.box.clamp(sample + sigma**2 * score)
        if i == len(self.sigmas) - 1:
            prev = denoised if self.config.final_denoise else sample
        else:
            prev = self._transition(sample, score, sigma, self.sigmas[i + 1].to(sample.device), generator)
        if not return_dict:
            return (prev, denoised)
        return BoxSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    def _euler_maruyama(self, x, score, sigma, sigma_next, generator):
        """Reverse VE SDE from σ to σ' (g² dt = d σ²): x + (σ² − σ'²)·s + √(σ² − σ'²)·z, then the projection."""
        var = sigma**2 - sigma_next**2
        return self.project(x + var * score + var.sqrt() * self._noise_like(x, generator))

    def _noise_like(self, sample, generator):
        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def __len__(self):
        return self.config.num_train_timesteps


def _custom_grid(num_inference_steps, sigmas, timesteps) -> torch.Tensor | None:
    """The σ grid given as ``sigmas`` or ``timesteps`` (float64), checked: 1-D, finite, positive, decreasing."""
    if sigmas is None and timesteps is None:
        return None
    if sigmas is not None and timesteps is not None:
        raise ValueError("give sigmas or timesteps, not both (a box scheduler's timesteps are its σ values)")
    if num_inference_steps is not None:
        raise ValueError("give num_inference_steps or a custom σ grid (sigmas/timesteps), not both")
    grid = torch.as_tensor(sigmas if sigmas is not None else timesteps).detach().to("cpu", torch.float64)
    if grid.ndim != 1 or len(grid) < 1 or not torch.isfinite(grid).all() or (grid <= 0).any() \
            or (grid[1:] >= grid[:-1]).any():
        raise ValueError(f"a custom σ grid must be a non-empty 1-D list of positive, finite, strictly decreasing "
                         f"values, got {grid.tolist()}")
    return grid
