"""A one-step text-to-image student of a latent, text-conditioned teacher (StableDiffusionPipeline-shaped)."""
from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..condition import Condition
from ..models.latent_text import encode_prompts, latents_to_images
from .base import PipelineBase
from .output import OUTPUT_TYPES, check_generator, check_positive_int, initial_noise, postprocess


class OneStepTextToImagePipeline(PipelineBase):
    """``pipe(prompt=...).images``: the prompt's embedding by the teacher's text encoder, one pass of the student in
    latent space, x = G(z | prompt) = D_θ(σ_init·z, σ_init | prompt), and the teacher's VAE decoder.

    Components: ``student`` (:class:`~gendiv.models.OneStepGenerator` over the teacher's UNet), ``vae``,
    ``text_encoder``, ``tokenizer`` (the teacher's own).
    """

    model_cpu_offload_seq = "text_encoder->student->vae"

    def __init__(self, student, vae, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(student=student, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent, as SD's pipelines

    def latent_shape(self, batch: int, height: int | None, width: int | None) -> tuple:
        """[batch, C, height/f, width/f], f the VAE's scale factor; the student's trained size by default. Other sizes
        run too (the student is convolutional); its UNet refuses sizes its levels cannot halve evenly."""
        _, channels, h, w = self.student.sample_shape(batch)
        f = self.vae_scale_factor
        height = h * f if height is None else check_positive_int(height, "height")
        width = w * f if width is None else check_positive_int(width, "width")
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of the VAE's scale factor {f}, got {height}×{width}")
        return (batch, channels, height // f, width // f)

    def encode_prompt(self, prompt, device) -> torch.Tensor:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        return encode_prompts(self.tokenizer, self.text_encoder, list(prompt), device)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 prompt_embeds: torch.Tensor | None = None, generator: torch.Generator | list | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 height: int | None = None, width: int | None = None, latents_sampler: str = "gaussian"):
        """Generate one image per prompt (times ``num_images_per_prompt``).

        Args:
            prompt: a string or a list of strings (or give ``prompt_embeds`` [P, L, D] instead).
            num_images_per_prompt: images per prompt.
            height, width: image size in pixels (diffusers' arguments); the student's trained size if omitted; other
                sizes run (the student is convolutional) when its UNet can halve their latents evenly.
            generator: a torch.Generator, or a list of one per image (image i then depends on generator i only).
            latents: the unit-scale input noise z, shape [P·num_images_per_prompt, C, height/f, width/f]; drawn if
                omitted.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (decoded images) or ``"latent"`` (the student's latents).
            return_dict: return an ``ImagePipelineOutput`` (``.images``) instead of a tuple.
            latents_sampler: ``"gaussian"`` (i.i.d.) or ``"sobol"`` (scrambled quasi-Monte-Carlo latents seeded from
                ``generator``; gendiv.latents).
        """
        if output_type not in (*OUTPUT_TYPES, "latent"):
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {(*OUTPUT_TYPES, 'latent')}")
        per_prompt = check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of prompt and prompt_embeds")
        device = self._execution_device
        embeds = self.encode_prompt(prompt, device) if prompt is not None else torch.as_tensor(prompt_embeds).to(device)
        embeds = embeds.repeat_interleave(per_prompt, dim=0)
        shape = self.latent_shape(embeds.shape[0], height, width)
        check_generator(generator, shape[0])
        z = initial_noise(shape, generator, device, latents, latents_sampler)
        x = self.student(z, Condition(text_embeds=embeds.float()))
        out = x if output_type == "latent" else postprocess(latents_to_images(self.vae, x), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
