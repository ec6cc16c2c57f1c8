"""Postprocessing shared by gendiv pipelines: [-1, 1] tensors → pil / np / pt, points → np / pt."""
from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..latents import sample_latents

OUTPUT_TYPES = ("pil", "np", "pt")


def postprocess(x: torch.Tensor, output_type: str):
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; choose one of {OUTPUT_TYPES}")
    if x.ndim == 2:  # low-dimensional points: returned as they are
        if output_type == "pil":
            raise ValueError("output_type='pil' needs image data; this model generates points: use 'np' or 'pt'")
        return x.cpu() if output_type == "pt" else x.cpu().numpy()
    images = (x / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.cpu()
    images = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return DiffusionPipeline.numpy_to_pil(images) if output_type == "pil" else images


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_generator(generator, batch_size: int):
    """One torch.Generator, None, or a list of one generator per sample (diffusers' per-sample seeding)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, list) or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
    if len(generator) != batch_size:
        raise ValueError(f"the generator list has {len(generator)} generators for a batch of {batch_size} samples; "
                         "give one generator per sample (batch_size × num_images_per_prompt) or a single generator")


def draw_per_sample(draw, shape, generator) -> torch.Tensor:
    """``draw(shape, generator)``, or for a generator list sample i drawn alone from generator i, so that a sample
    does not depend on the rest of its batch (what ``randn_tensor`` does for Gaussian noise)."""
    if isinstance(generator, list):
        return torch.cat([draw((1, *shape[1:]), g) for g in generator])
    return draw(shape, generator)


def initial_noise(shape, generator, device, latents=None, sampler: str = "gaussian") -> torch.Tensor:
    """Seeded unit noise (``sampler``: gaussian, or sobol quasi-Monte-Carlo, gendiv.latents), or the given latents
    after checking their shape and values (float32 either way: the denoisers cast their own network input, so a
    bfloat16 pipeline keeps its sampler state in float32)."""
    if latents is None and sampler != "gaussian":
        return sample_latents(shape, generator, sampler).to(device)
    if latents is None:
        return randn(shape, generator, device)
    return check_latents(latents, shape, device)


def check_latents(latents, shape, device) -> torch.Tensor:
    latents = torch.as_tensor(latents)
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or Inf values")
    return latents.to(device).float()


def make_class_labels(class_labels, batch_size: int, num_classes, device, generator=None, num_images_per_label=1):
    """Labels as a LongTensor [batch_size · num_images_per_label]: given (int or list of batch_size, each repeated
    num_images_per_label times) or, for conditional models, drawn at random (one per sample, from its generator)."""
    total = batch_size * num_images_per_label
    if class_labels is None:
        if num_classes is None:
            return None
        return draw_per_sample(lambda shape, g: torch.randint(0, num_classes, shape, generator=g), (total,),
                               generator).to(device)
    if num_classes is None:
        raise ValueError("class_labels given but the model is unconditional")
    labels = torch.as_tensor(class_labels).reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers, got {labels.dtype} values (e.g. {labels[:3].tolist()})")
    labels = labels.long()
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.numel() != batch_size:
        raise ValueError(f"got {labels.numel()} class labels for batch_size={batch_size}")
    if ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"class label out of range [0, {num_classes})")
    return labels.repeat_interleave(num_images_per_label).to(device)


def as_grid(values) -> torch.Tensor | None:
    """A custom ``sigmas``/``timesteps`` list as a float64 tensor (some diffusers schedulers accept tensors only)."""
    return None if values is None else torch.as_tensor(values, dtype=torch.float64)


def randn(shape, generator, device, dtype=torch.float32):
    """Unit Gaussian noise by diffusers' ``randn_tensor``: CPU generators draw on the CPU (the same samples on every
    device), and a generator list draws sample i from generator i."""
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device), dtype=dtype)
