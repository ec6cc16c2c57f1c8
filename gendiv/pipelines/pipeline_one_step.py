"""Sampling a distilled one-step generator, with an optional few-step re-noising schedule."""
from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..condition import Condition
from .base import PipelineBase
from .output import check_generator, check_positive_int, initial_noise, make_class_labels, postprocess, randn


class OneStepPipeline(PipelineBase):
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
                 output_type: str = "pil", return_dict: bool = True, num_images_per_prompt: int = 1,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ("latents",),
                 latents_sampler: str = "gaussian"):
        """Generate samples.

        Args:
            batch_size: number of samples (of class labels, when given as a list).
            class_labels: int, list or tensor of labels (conditional students); random labels if omitted.
            num_images_per_prompt: samples per class label; the batch holds batch_size × num_images_per_prompt.
            renoise_sigmas: optional decreasing σ values for extra re-noise/denoise steps (few-step sampling).
            generator: a torch.Generator, or a list of one per sample (sample i then depends on generator i only).
            latents: the unit-scale input noise z, shape [batch, ...]; drawn if omitted.
            output_type: ``"pil"`` (images), ``"np"`` or ``"pt"``.
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
            callback_on_step_end: ``callback(pipe, i, t, tensors) -> dict`` after the generator's pass (i = 0,
                t = σ_init) and after each re-noise step (t = its σ), diffusers' convention; a returned ``"latents"``
                replaces the current sample x̂₀.
            callback_on_step_end_tensor_inputs: the tensors it receives (``pipe._callback_tensor_inputs``).
            latents_sampler: ``"gaussian"`` (i.i.d.) or ``"sobol"``: scrambled quasi-Monte-Carlo latents seeded from
                ``generator`` (one generator), a more even cover of the noise space for lower-variance evaluation.
        """
        per_label = check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        total = check_positive_int(batch_size, "batch_size") * per_label
        check_generator(generator, total)
        names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        sigmas = [float(s) for s in renoise_sigmas or []]
        if any(s <= 0 for s in sigmas) or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"renoise_sigmas must be positive and decreasing, got {sigmas}")
        device = self._execution_device
        shape = self.student.sample_shape(total)
        labels = make_class_labels(class_labels, batch_size, self.student.num_classes, device, generator, per_label)
        cond = None if labels is None else Condition(class_labels=labels)
        z = initial_noise(shape, generator, device, latents, latents_sampler)
        self._num_timesteps = 1 + len(sigmas)
        x = self.student(z, cond)
        x = self._step_end(callback_on_step_end, names, 0, self.student.config.sigma_init, {"latents": x})["latents"]
        for i, s in enumerate(self.progress_bar(sigmas) if sigmas else [], start=1):
            x_noisy = x + s * randn(shape, generator, device)
            x = self.student.backbone(x_noisy, s, cond)
            x = self._step_end(callback_on_step_end, names, i, s, {"latents": x})["latents"]
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
