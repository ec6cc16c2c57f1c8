"""Sampling a distilled one-step generator, with an optional few-step re-noising schedule."""
from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..condition import Condition
from .output import check_batch_size, initial_noise, make_class_labels, postprocess, randn


class OneStepPipeline(DiffusionPipeline):
    """``pipe(batch_size=..., class_labels=...).images`` for a :class:`~gendiv.models.OneStepGenerator`.

    One network pass: x = G(z) = D_θ(σ_init·z, σ_init). With ``renoise_sigmas=[σ₁, σ₂, ...]`` each further step
    re-noises to σ_k and denoises with the same network (x ← D_θ(x + σ_k n, σ_k)), as few-step DMD2 does.
    """

    model_cpu_offload_seq = "student"

    def __init__(self, student):
        super().__init__()
        self.register_modules(student=student)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, renoise_sigmas: list[float] | None = None,
                 generator: torch.Generator | list | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """Generate samples.

        Args:
            batch_size: number of samples.
            class_labels: int, list or tensor of labels (conditional students); random labels if omitted.
            renoise_sigmas: optional decreasing σ values for extra re-noise/denoise steps (few-step sampling).
            generator: torch.Generator (or one per sample) for reproducible noise.
            latents: the unit-scale input noise z, shape [batch, ...]; drawn if omitted.
            output_type: ``"pil"`` (images), ``"np"`` or ``"pt"``.
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
        """
        batch_size = check_batch_size(batch_size)
        device = self._execution_device
        shape = self.student.sample_shape(batch_size)
        labels = make_class_labels(class_labels, batch_size, self.student.num_classes, device, generator)
        cond = None if labels is None else Condition(class_labels=labels)
        z = initial_noise(shape, generator, device, latents)
        sigmas = list(renoise_sigmas or [])
        if any(s <= 0 for s in sigmas) or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"renoise_sigmas must be positive and decreasing, got {sigmas}")
        x = self.student(z, cond)
        for s in self.progress_bar(sigmas) if sigmas else []:
            x_noisy = x + s * randn(shape, generator, device)
            x = self.student.backbone(x_noisy, s, cond)
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
