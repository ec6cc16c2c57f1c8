"""Sampling a reflected diffusion model (or any score on a box) with gendiv's box schedulers."""
from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..guidance import resolve_guider, target_classes
from ..models.denoiser import sample_shape
from .base import PipelineBase
from .output import (as_grid, check_generator, check_latents, check_positive_int, draw_per_sample, make_class_labels,
                     postprocess)


class ReflectedDiffusionPipeline(PipelineBase):
    """A denoiser on a box with a :class:`~gendiv.schedulers.ReflectedSDEScheduler`, ``ReflectedODEScheduler`` or
    ``ThresholdedSDEScheduler``.

    Guidance is classifier-free in diffusers' convention, ``D_u + s(D_c − D_u)`` (the reflected paper's
    ``(1 + w)s_c − w s_u`` with s = 1 + w), and the unconditional pass uses the denoiser's null class: the same
    reserved index that label dropout used in training (the reference code used class 0 at sampling instead).
    """

    model_cpu_offload_seq = "denoiser"

    def __init__(self, denoiser, scheduler):
        super().__init__()
        if not hasattr(scheduler, "prior_sample") or not hasattr(scheduler, "box"):
            raise ValueError(f"{type(scheduler).__name__} is not a box scheduler; use ReflectedSDEScheduler, "
                             "ReflectedODEScheduler or ThresholdedSDEScheduler")
        self.register_modules(denoiser=denoiser, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, guidance_scale: float = 1.0,
                 num_inference_steps: int = 100, generator: torch.Generator | list | None = None,
                 output_type: str = "pil", return_dict: bool = True, guider=None, latents: torch.Tensor | None = None,
                 num_images_per_prompt: int = 1, sigmas=None, timesteps=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """Generate samples inside the scheduler's box.

        Args:
            batch_size: number of samples (of class labels, when given as a list).
            class_labels: int, list or tensor of labels (conditional models); random labels if omitted.
            num_images_per_prompt: samples per class label; the batch holds batch_size × num_images_per_prompt.
            guidance_scale: classifier-free guidance scale s (1 = the conditional model, no extra pass).
            guider: a gendiv or diffusers guider instead of ``guidance_scale`` (see ``GenDivPipeline``).
            num_inference_steps: denoiser calls per sample (the last one is the final denoise at σ_min), plus
                ``scheduler.config.corrector_steps`` Langevin calls per step where the scheduler has them.
            sigmas, timesteps: a custom decreasing σ grid instead (the box schedulers' timesteps are σ values;
                diffusers' ``retrieve_timesteps`` hands it to ``scheduler.set_timesteps``); the final denoise is at its
                last σ.
            generator: a torch.Generator, or a list of one per sample (sample i then depends on generator i only).
            latents: the starting sample at the first σ, in box coordinates, shape [batch, ...]; drawn from the
                scheduler's prior if omitted.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``; images are mapped from the box to [0, 1]; points (2-D toy
                models) come back in box coordinates (``"np"``/``"pt"``).
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
            callback_on_step_end: ``callback(pipe, i, t, tensors) -> dict`` after each step (diffusers' convention,
                t = σ); a returned ``"latents"`` replaces the sample and is folded back into the box if it left it.
            callback_on_step_end_tensor_inputs: the tensors it receives (``pipe._callback_tensor_inputs``).
        """
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        per_label = check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        total = check_positive_int(batch_size, "batch_size") * per_label
        check_generator(generator, total)
        names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        labels = make_class_labels(class_labels, batch_size, target_classes(self.denoiser, guider), device, generator,
                                   per_label)  # an unconditional model takes labels for a classifier guide
        custom = sigmas is not None or timesteps is not None
        steps, _ = retrieve_timesteps(self.scheduler, None if custom else num_inference_steps, device,
                                      as_grid(timesteps), as_grid(sigmas))
        self._num_timesteps = len(steps)
        denoiser, cond = resolve_guider(self.denoiser, guidance_scale, guider, labels, total, device, self.scheduler)
        x = self._initial_sample(sample_shape(self.denoiser, total), generator, device, latents)
        corrector_steps = getattr(self.scheduler.config, "corrector_steps", 0)
        for i, t in enumerate(self.progress_bar(steps)):
            sigma = self.scheduler.sigmas[i].to(device).expand(total)  # the scheduler's own σ
            if hasattr(denoiser, "set_state"):
                denoiser.set_state(i, len(steps), t)
            for _ in range(corrector_steps if i < len(steps) - 1 else 0):
                x = self.scheduler.step_correct(denoiser(x, sigma, cond), t, x, generator=generator)
            x = self.scheduler.step(denoiser(x, sigma, cond), t, x, generator=generator).prev_sample
            if callback_on_step_end is not None:  # an edited sample is folded back into the box
                x = self.scheduler.project(self._step_end(callback_on_step_end, names, i, t, {"latents": x})["latents"])
        box = self.scheduler.box
        out = postprocess(x if x.ndim == 2 else 2 * box.to_unit(x) - 1, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)

    def _initial_sample(self, shape, generator, device, latents) -> torch.Tensor:
        """The scheduler's prior (sample by sample for a generator list), or the given ``latents`` inside the box."""
        if latents is not None:
            x = check_latents(latents, shape, device)
            self.scheduler.box.check_inside(x, "latents")
            return x
        return draw_per_sample(lambda s, g: self.scheduler.prior_sample(s, g, device), shape, generator)
