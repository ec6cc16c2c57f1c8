"""Teachers from diffusers pipeline folders of the DiT, SDXL, SD3 and PixArt families (``pipeline_denoiser.py``).

Everything that shapes x̂₀ is read from the folder: the parameterisation, prediction type and clipping from the
scheduler, the latent shape from the network, the VAE's ``scaling_factor`` and ``shift_factor`` for decoding. Prompts
are encoded by the pipeline's own ``encode_prompt``, and the null condition is the pipeline's own negative for an
empty negative prompt (zeros where SDXL's ``force_zeros_for_empty_prompt`` says so), so CFG through gendiv's guider
equals the pipeline's guided prediction (tests/test_teachers_families.py).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from ..condition import Condition
from ..errors import InputError
from .from_diffusers import denoiser_kwargs_from_scheduler
from .latent_text import latents_to_images
from .pipeline_denoiser import FAMILIES, PipelineDenoiser, pack_text

PIPELINE_FAMILIES = {"DiTPipeline": "dit", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3",
                     "PixArtAlphaPipeline": "pixart", "PixArtSigmaPipeline": "pixart"}
NETWORK = {"dit": "transformer", "sdxl": "unet", "sd3": "transformer", "pixart": "transformer"}


@dataclass
class PipelineTeacher:
    """A family's denoiser in latent space, the pipeline (without its network) that encodes prompts, and its VAE."""

    denoiser: PipelineDenoiser
    pipeline: object

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def family(self) -> str:
        return self.denoiser.config.family

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[P, L + k, D] packed prompt conditions, as the pipeline encodes them."""
        return encode_packed(self.pipeline, self.family, list(prompts))[0]

    def condition(self, prompts: list[str]) -> Condition:
        return Condition(text_embeds=self.encode(prompts))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents_to_images(self.vae, latents.to(self.vae.device))

    def save_student(self, generator, folder) -> None:
        """The one-step student as a stock diffusers folder of the teacher's own pipeline class: the student's network
        in place of the teacher's and a one-step scheduler (:func:`one_step_scheduler`), so that
        ``pipe(prompt, num_inference_steps=1, guidance_scale=1.0)`` gives the student's images."""
        backbone = generator.backbone
        sigma_init = generator.config.sigma_init if hasattr(generator, "config") else generator.sigma_init
        scheduler = one_step_scheduler(self.pipeline.scheduler, self.denoiser.config, sigma_init)
        net = type(self.denoiser.net).from_config(self.denoiser.net.config)
        net.load_state_dict(backbone.net.state_dict())
        components = {**self.pipeline.components, NETWORK[self.family]: net, "scheduler": scheduler}
        type(self.pipeline)(**components).save_pretrained(str(folder))


def one_step_scheduler(scheduler, denoiser_config, sigma_init: float):
    """A stock scheduler whose single step from the pipeline's initial noise is x̂₀ at the student's σ_init: Euler
    with trailing spacing (one step at t = T − 1, σ = σ_max, x = σ_max·z) for beta-schedule teachers, flow-matching
    Euler without shift (t = 1) for flow teachers; refused where no stock one-step call can match."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if denoiser_config.x0_clip:
        raise InputError("the teacher clips x̂₀ (scheduler clip_sample/thresholding) and Euler's step does not: "
                         "a stock one-step pipeline cannot reproduce the student")
    if denoiser_config.parameterization == "flow":
        if sigma_init < 1e4:
            raise InputError(f"student.sigma_init={sigma_init:g}: a flow pipeline's one step starts from pure noise "
                             "(t = 1, σ = ∞); set sigma_init ≥ 1e4 for an exported one-step pipeline")
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=1.0, use_dynamic_shifting=False)
    if denoiser_config.parameterization != "vp":
        raise InputError(f"no stock one-step scheduler for a {denoiser_config.parameterization} teacher")
    euler = EulerDiscreteScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    euler.set_timesteps(1)
    sigma_max = float(euler.sigmas[0])
    if abs(sigma_init - sigma_max) > 1e-3 * sigma_max:
        raise InputError(f"student.sigma_init={sigma_init:g} but the teacher's one-step pipeline starts at σ_max="
                         f"{sigma_max:.4g} (t = {int(euler.timesteps[0])}); set student.sigma_init to {sigma_max:.6g}")
    return euler


def _call_default(pipeline, name: str):
    """A default of the pipeline's ``__call__`` (e.g. ``max_sequence_length``): encode as the pipeline does."""
    return inspect.signature(type(pipeline).__call__).parameters[name].default


def encode_packed(pipeline, family: str, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed prompt conditions [P, L + k, D], packed null conditions [P, L + k, D]): what the pipeline's
    ``__call__`` feeds its network in the positive and the negative pass (no negative prompt given)."""
    tokens, extras, null_tokens, null_extras = _encode(pipeline, family, prompts)
    return pack_text(tokens, extras), pack_text(null_tokens, null_extras)


def _encode(pipeline, family: str, prompts: list[str]):
    """(tokens, per-prompt vectors, null tokens, null vectors) by the pipeline's own ``encode_prompt``."""
    device = pipeline._execution_device
    if family == "sdxl":
        pos, neg, pooled, neg_pooled = pipeline.encode_prompt(prompts, device=device, do_classifier_free_guidance=True)
        return pos, {"pooled": pooled}, neg, {"pooled": neg_pooled}
    if family == "sd3":
        pos, neg, pooled, neg_pooled = pipeline.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=True,
            max_sequence_length=_call_default(pipeline, "max_sequence_length"))
        return pos, {"pooled": pooled}, neg, {"pooled": neg_pooled}
    if family == "pixart":
        pos, mask, neg, neg_mask = pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=True, device=device,
            clean_caption=_call_default(pipeline, "clean_caption"),  # as __call__ (off without bs4 and ftfy)
            max_sequence_length=_call_default(pipeline, "max_sequence_length"))
        return pos, {"mask": mask}, neg, {"mask": neg_mask}
    raise InputError(f"the {family} family takes no prompts")


def _added_ids(pipeline, family: str, net) -> list | None:
    """The constant micro-conditioning of a default-size call (SDXL: original size, crop (0, 0), target size)."""
    size = net.config.sample_size * pipeline.vae_scale_factor
    if family == "sdxl":
        if pipeline.config.get("requires_aesthetics_score"):
            raise InputError("an SDXL refiner (requires_aesthetics_score=True) is not a text-to-image teacher; refused")
        return [size, size, 0, 0, size, size]
    if family == "pixart" and net.use_additional_conditions:
        return [size, size]
    return None


def pipeline_teacher_from_folder(path, index: dict) -> PipelineTeacher:
    """A saved DiT-, SDXL-, SD3- or PixArt-family pipeline folder as a teacher."""
    import diffusers

    path, kind = Path(path), index.get("_class_name", "?")
    family = PIPELINE_FAMILIES[kind]
    component = NETWORK[family]
    library, class_name = index[component]
    if class_name != FAMILIES[family]:
        raise InputError(f"{path}: {kind}'s {component} is {library}.{class_name}; gendiv calls {kind} networks "
                         f"of class {FAMILIES[family]}")
    net = getattr(diffusers, class_name).from_pretrained(path / component)
    pipeline = getattr(diffusers, kind).from_pretrained(path, **{component: None})
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return PipelineTeacher(pipeline_denoiser(net, pipeline, family, where=f"{path} ({kind})"), pipeline)


def pipeline_denoiser(net, pipeline, family: str, where: str = "") -> PipelineDenoiser:
    """``net`` (the family's network) called as ``pipeline`` calls it, with the null condition the pipeline uses."""
    kwargs = denoiser_kwargs_from_scheduler(pipeline.scheduler, where or family)
    if family == "dit":
        return PipelineDenoiser.from_net(net, family, num_classes=net.config.num_embeds_ada_norm, **kwargs)
    _, extras, null_tokens, null_extras = _encode(pipeline, family, [""])
    null = pack_text(null_tokens, null_extras)[0]
    den = PipelineDenoiser.from_net(net, family, text_embeds_shape=list(null.shape),
                                    text_parts=[[name, v.shape[-1]] for name, v in extras.items()],
                                    added_ids=_added_ids(pipeline, family, net), **kwargs)
    den.null_text_embeds.copy_(null)
    return den
