"""Sampling a reflected diffusion model (or any score on a box) with gendiv's box schedulers."""
from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..guidance import resolve_guider
from ..models.denoiser import sample_shape
from .output import check_batch_size, make_class_labels, postprocess


class ReflectedDiffusionPipeline(DiffusionPipeline):
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
                 num_inference_steps: int = 100, generator: torch.Generator | None = None, output_type: str = "pil",
                 return_dict: bool = True, guider=None):
        """Generate samples inside the scheduler's box.

        Args:
            batch_size: number of samples.
            class_labels: int, list or tensor of labels (conditional models); random labels if omitted.
            guidance_scale: classifier-free guidance scale s (1 = the conditional model, no extra pass).
            guider: a gendiv or diffusers guider instead of ``guidance_scale`` (see ``GenDivPipeline``).
            num_inference_steps: denoiser calls per sample (the last one is the final denoise at σ_min), plus
                ``scheduler.config.corrector_steps`` Langevin calls per step where the scheduler has them.
            generator: torch.Generator for reproducible samples.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``; images are mapped from the box to [0, 1]; points (2-D toy
                models) come back in box coordinates (``"np"``/``"pt"``).
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
        """
        batch_size = check_batch_size(batch_size)
        device = self._execution_device
        labels = make_class_labels(class_labels, batch_size, self.denoiser.config.num_classes, device, generator)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        denoiser, cond = resolve_guider(self.denoiser, guidance_scale, guider, labels, batch_size, device, self.scheduler)
        x = self.scheduler.prior_sample(sample_shape(self.denoiser, batch_size), generator, device)
        corrector_steps = getattr(self.scheduler.config, "corrector_steps", 0)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = self.scheduler.sigmas[i].to(device).expand(batch_size)  # the scheduler's own σ
            if hasattr(denoiser, "set_state"):
                denoiser.set_state(i, len(self.scheduler.timesteps), t)
            for _ in range(corrector_steps if t != self.scheduler.timesteps[-1] else 0):
                x = self.scheduler.step_correct(denoiser(x, sigma, cond), t, x, generator=generator)
            x = self.scheduler.step(denoiser(x, sigma, cond), t, x, generator=generator).prev_sample
        box = self.scheduler.box
        out = postprocess(x if x.ndim == 2 else 2 * box.to_unit(x) - 1, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
