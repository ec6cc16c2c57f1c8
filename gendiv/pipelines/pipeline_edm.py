"""Multi-step sampling of a gendiv denoiser with diffusers' EDM schedulers."""
from __future__ import annotations

import torch
from diffusers import EDMEulerScheduler
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..guidance import resolve_guider
from ..models.denoiser import sample_shape
from .output import check_batch_size, initial_noise, make_class_labels, postprocess


class GenDivPipeline(DiffusionPipeline):
    """Sampling pipeline for a :class:`~gendiv.models.UNetDenoiser` (or MLPDenoiser) and an EDM scheduler.

    The denoiser returns x̂₀ directly; before each ``scheduler.step`` it is converted to the scheduler's raw model
    output by inverting the scheduler's own ``precondition_outputs``, so stock ``EDMEulerScheduler`` and
    ``EDMDPMSolverMultistepScheduler`` drive it unchanged.
    """

    model_cpu_offload_seq = "denoiser"

    def __init__(self, denoiser, scheduler):
        super().__init__()
        if not hasattr(scheduler, "precondition_outputs") or not hasattr(scheduler, "precondition_noise"):
            raise ValueError(f"{type(scheduler).__name__} is not an EDM scheduler (needs precondition_outputs/"
                             "precondition_noise); use EDMEulerScheduler or EDMDPMSolverMultistepScheduler")
        self.register_modules(denoiser=denoiser, scheduler=scheduler)

    @classmethod
    def from_denoiser(cls, denoiser, **scheduler_kwargs) -> "GenDivPipeline":
        """An EDMEulerScheduler over σ ∈ [0.002, 80], narrowed to the σ range a VP (DDPM-family) model was trained on."""
        kwargs = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": denoiser.config.sigma_data, "rho": 7.0}
        if denoiser.config.get("parameterization") == "vp":
            from ..space import vp_sigmas_from_alphas_cumprod

            grid = vp_sigmas_from_alphas_cumprod(denoiser.alphas_cumprod)
            kwargs.update(sigma_min=max(0.002, float(grid.min())), sigma_max=min(80.0, float(grid.max())))
        kwargs.update(scheduler_kwargs)
        return cls(denoiser=denoiser, scheduler=EDMEulerScheduler(**kwargs))

    def _raw_model_output(self, denoised, sample, sigma):
        """F such that scheduler.precondition_outputs(sample, F, σ) == denoised (an affine inverse)."""
        skip = self.scheduler.precondition_outputs(sample, torch.zeros_like(sample), sigma)
        out_scale = self.scheduler.precondition_outputs(torch.zeros_like(sample), torch.ones_like(sample), sigma)
        return (denoised - skip) / out_scale

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, num_inference_steps: int = 18,
                 generator: torch.Generator | list | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, guidance_scale: float = 1.0, guider=None):
        """Generate samples.

        Args:
            batch_size: number of samples.
            class_labels: int, list or tensor of labels (conditional models); random labels if omitted.
            guidance_scale: classifier-free guidance scale s, diffusers' convention (1 = off; the null class of label
                dropout is the unconditional pass). For a GFT model (scalar condition ``guidance``) it is the model's
                input instead: one network pass per step.
            guider: a gendiv guider (``IntervalGuidance(ClassifierFreeGuidance(pipe.denoiser, 2), 0.3, 5)``,
                ``AutoGuidance(...)``, ...) or a stock diffusers guider (``AdaptiveProjectedGuidance(...)``) in place of
                ``guidance_scale``.
            num_inference_steps: scheduler steps (one denoiser call each for Euler).
            generator: torch.Generator (or one per sample) for reproducible noise.
            latents: initial noise at unit scale, shape [batch, ...]; drawn if omitted.
            output_type: ``"pil"`` (images), ``"np"`` or ``"pt"``; images are mapped from [-1, 1] to [0, 1].
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
        """
        batch_size = check_batch_size(batch_size)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        device = self._execution_device
        shape = sample_shape(self.denoiser, batch_size)
        labels = make_class_labels(class_labels, batch_size, self.denoiser.config.num_classes, device, generator)
        x = initial_noise(shape, generator, device, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        denoiser, cond = resolve_guider(self.denoiser, guidance_scale, guider, labels, batch_size, device, self.scheduler)
        x = x * self.scheduler.sigmas[0].to(device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = self.scheduler.sigmas[i].to(device)  # the scheduler's own σ, not rebuilt from c_noise = ln(σ)/4
            self.scheduler.scale_model_input(x, t)  # keeps the scheduler's bookkeeping; D does its own c_in
            if hasattr(denoiser, "set_state"):  # a diffusers guider follows the loop
                denoiser.set_state(i, len(self.scheduler.timesteps), t)
            denoised = denoiser(x, sigma.expand(batch_size).to(device), cond)
            model_output = self._raw_model_output(denoised, x, sigma)
            x = self.scheduler.step(model_output, t, x, generator=generator if not isinstance(generator, list) else None).prev_sample
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
