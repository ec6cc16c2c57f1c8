"""Multi-step sampling of a gendiv denoiser with diffusers' EDM schedulers."""
from __future__ import annotations

import torch
from diffusers import EDMEulerScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..guidance import resolve_guider, target_classes
from ..models.denoiser import sample_shape
from .base import PipelineBase
from .output import as_grid, check_generator, check_positive_int, initial_noise, make_class_labels, postprocess


class GenDivPipeline(PipelineBase):
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
                 output_type: str = "pil", return_dict: bool = True, guidance_scale: float = 1.0, guider=None,
                 num_images_per_prompt: int = 1, sigmas=None, timesteps=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """Generate samples.

        Args:
            batch_size: number of samples (of class labels, when given as a list).
            class_labels: int, list or tensor of labels (conditional models); random labels if omitted.
            num_images_per_prompt: samples per class label; the batch holds batch_size × num_images_per_prompt.
            guidance_scale: classifier-free guidance scale s, diffusers' convention (1 = off; the null class of label
                dropout is the unconditional pass). For a GFT model (scalar condition ``guidance``) it is the model's
                input instead: one network pass per step.
            guider: a gendiv guider (``SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(pipe.denoiser, 2), 0.3,
                5)``, ``AutoGuidedDenoiser(...)``, ...) or a diffusers guider (``AdaptiveProjectedGuidance(...)``)
                in place of ``guidance_scale``.
            num_inference_steps: scheduler steps (one denoiser call each for Euler).
            sigmas, timesteps: a custom grid handed to ``scheduler.set_timesteps`` as diffusers pipelines do (by
                ``retrieve_timesteps``); its meaning is the scheduler's (EDMEulerScheduler reads ``sigmas`` as its
                ramp in [0, 1]); ``num_inference_steps`` is then the grid's length.
            generator: a torch.Generator, or a list of one per sample (sample i then depends on generator i only).
            latents: initial noise at unit scale, shape [batch, ...]; drawn if omitted.
            output_type: ``"pil"`` (images), ``"np"`` or ``"pt"``; images are mapped from [-1, 1] to [0, 1].
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
            callback_on_step_end: ``callback(pipe, i, t, tensors) -> dict`` after each scheduler step (diffusers'
                convention); a returned ``"latents"`` replaces the sample at the current σ.
            callback_on_step_end_tensor_inputs: the tensors it receives (``pipe._callback_tensor_inputs``).
        """
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        per_label = check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        total = check_positive_int(batch_size, "batch_size") * per_label
        if sigmas is None and timesteps is None:
            check_positive_int(num_inference_steps, "num_inference_steps")
        check_generator(generator, total)
        names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = make_class_labels(class_labels, batch_size, target_classes(self.denoiser, guider), device, generator,
                                   per_label)  # an unconditional model takes labels for a classifier guide
        x = initial_noise(sample_shape(self.denoiser, total), generator, device, latents)
        custom = sigmas is not None or timesteps is not None
        steps, _ = retrieve_timesteps(self.scheduler, None if custom else num_inference_steps, device,
                                      as_grid(timesteps), as_grid(sigmas))
        self._num_timesteps = len(steps)
        denoiser, cond = resolve_guider(self.denoiser, guidance_scale, guider, labels, total, device, self.scheduler)
        x = x * self.scheduler.sigmas[0].to(device)
        for i, t in enumerate(self.progress_bar(steps)):
            sigma = self.scheduler.sigmas[i].to(device)  # the scheduler's own σ, not rebuilt from c_noise = ln(σ)/4
            self.scheduler.scale_model_input(x, t)  # keeps the scheduler's bookkeeping; D does its own c_in
            if hasattr(denoiser, "set_state"):  # a diffusers guider follows the loop
                denoiser.set_state(i, len(steps), t)
            denoised = denoiser(x, sigma.expand(total).to(device), cond)
            model_output = self._raw_model_output(denoised, x, sigma)
            x = self.scheduler.step(model_output, t, x, generator=generator).prev_sample
            x = self._step_end(callback_on_step_end, names, i, t, {"latents": x})["latents"]
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
