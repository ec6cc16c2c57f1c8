"""Latent, text-conditioned teachers shaped like ``StableDiffusionPipeline``: VAE + UNet2DConditionModel + text
encoder + tokenizer + scheduler.

Distillation happens in the VAE's latent space, on the latents the UNet itself sees (``vae.encode(x) ·
scaling_factor``); the condition is the text encoder's prompt embedding (``encoder_hidden_states``), and the null
prompt ``""`` is the guidance null, exactly as ``StableDiffusionPipeline`` builds its negative pass for CFG. The
UNet's parameterisation is read from the scheduler as for pixel-space teachers (``from_diffusers.py``).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..condition import GUIDANCE_SCALAR, Condition
from .denoiser import UNetDenoiser
from .from_diffusers import denoiser_kwargs_from_scheduler

TEXT_TEACHER_COMPONENTS = ("unet", "scheduler", "vae", "text_encoder", "tokenizer")


def is_text_pipeline_folder(path) -> bool:
    """A pipeline folder with a text encoder (``StableDiffusionPipeline`` and its relatives)."""
    index = Path(path) / "model_index.json"
    return index.is_file() and "text_encoder" in json.loads(index.read_text())


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device=None) -> torch.Tensor:
    """[P, L, D] prompt embeddings as StableDiffusionPipeline makes them: pad/truncate to the tokenizer's
    ``model_max_length`` and take the text encoder's last hidden state."""
    device = device if device is not None else text_encoder.device
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0].float()


def latents_to_images(vae, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents → images in [−1, 1] (undoing the VAE's ``scaling_factor`` and ``shift_factor``)."""
    shift = vae.config.get("shift_factor") or 0.0
    z = latents / vae.config.scaling_factor + shift
    return vae.decode(z.to(vae.dtype), return_dict=False)[0].float()


def text_denoiser(unet, scheduler, tokenizer, text_encoder, where: str = "") -> UNetDenoiser:
    """A text-conditioned UNet2DConditionModel and its scheduler as a gendiv denoiser whose null condition is the
    embedding of the empty prompt."""
    where = where or type(unet).__name__
    if type(unet).__name__ != "UNet2DConditionModel":
        raise ValueError(f"{where}: the denoising network is a {type(unet).__name__}; text-conditioned teachers need a "
                         "UNet2DConditionModel")
    if unet.config.get("addition_embed_type") is not None:
        raise ValueError(f"{where}: the UNet takes added conditions ({unet.config.addition_embed_type!r}, as SDXL's "
                         "pooled text and size embeddings); gendiv distils StableDiffusionPipeline-shaped UNets")
    null = encode_prompts(tokenizer, text_encoder, [""], device="cpu")[0]
    # a UNet with time_cond_proj_dim reads the guidance embedding of s − 1 (StableDiffusionPipeline feeds it and skips
    # CFG: a GFT or guidance-distilled UNet); without that input it would run on an embedding it never saw
    guided = [GUIDANCE_SCALAR] if unet.config.get("time_cond_proj_dim") else None
    den = UNetDenoiser.from_unet(unet, **denoiser_kwargs_from_scheduler(scheduler, where),
                                 text_embeds_shape=list(null.shape), scalar_names=guided)
    den.null_text_embeds.copy_(null)
    return den


@dataclass
class LatentTextTeacher:
    """The denoiser in latent space plus what turns prompts into conditions and latents into images."""

    denoiser: UNetDenoiser
    vae: object
    text_encoder: object
    tokenizer: object

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, prompts)

    def condition(self, prompts: list[str]) -> Condition:
        return Condition(text_embeds=self.encode(prompts))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents_to_images(self.vae, latents.to(self.vae.device))


def _load_component(path: Path, index: dict, name: str, kind: str):
    entry = index.get(name)
    if not entry or entry[0] is None or entry[1] is None:
        what = "a tokenizer" if name == "tokenizer" else f"a {name}"
        raise ValueError(f"{path}: the text-conditioned pipeline {kind} has no {name} component; gendiv needs {what} "
                         f"(one of {', '.join(TEXT_TEACHER_COMPONENTS)})")
    library, class_name = entry
    try:
        cls = getattr(importlib.import_module(library), class_name)
    except ImportError:
        raise ValueError(f"{path}: component {name} is {library}.{class_name}; install {library} "
                         f"(pip install {library}) to load it") from None
    except AttributeError:
        raise ValueError(f"{path}: component {name} is {library}.{class_name}, which {library} does not have") from None
    if not (path / name).is_dir():
        raise ValueError(f"{path}: component {name} is listed in model_index.json but the folder {path / name} is missing")
    return cls.from_pretrained(path / name)


def latent_text_teacher_from_folder(path) -> LatentTextTeacher:
    """A saved ``StableDiffusionPipeline``-shaped folder (vae, text_encoder, tokenizer, unet, scheduler) as a teacher."""
    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    kind = index.get("_class_name", "?")
    if "text_encoder_2" in index:
        raise ValueError(f"{path}: {kind} has two text encoders (SDXL-shaped); gendiv distils pipelines with one "
                         "text encoder (StableDiffusionPipeline-shaped)")
    parts = {name: _load_component(path, index, name, kind) for name in TEXT_TEACHER_COMPONENTS}
    for module in ("vae", "text_encoder"):
        parts[module].eval().requires_grad_(False)
    where = f"{path} ({kind})"
    den = text_denoiser(parts["unet"], parts["scheduler"], parts["tokenizer"], parts["text_encoder"], where)
    return LatentTextTeacher(den, parts["vae"], parts["text_encoder"], parts["tokenizer"])
