"""Postprocessing shared by gendiv pipelines: [-1, 1] tensors → pil / np / pt, points → np / pt."""
from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

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


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def initial_noise(shape, generator, device, latents=None) -> torch.Tensor:
    """Seeded unit noise, or the given latents after checking their shape and values."""
    if latents is None:
        return randn(shape, generator, device)
    latents = torch.as_tensor(latents)
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or Inf values")
    return latents.to(device).float()


def make_class_labels(class_labels, batch_size: int, num_classes, device, generator=None):
    """Labels as a LongTensor [batch]: given (int or list) or, for conditional models, drawn at random."""
    if class_labels is None:
        if num_classes is None:
            return None
        return torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
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
    return labels.to(device)


def randn(shape, generator, device, dtype=torch.float32):
    """Seeded noise on the CPU then moved, so a seed gives the same samples on every device."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generator]).to(device)
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
