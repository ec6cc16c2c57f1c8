"""What the hardware and PyTorch give a training step, as config switches with per-device defaults (issue 13).

- ``run.mixed_precision: auto`` → bf16 autocast for image models where the device computes bf16 natively (CUDA
  with bf16, or a CPU whose oneDNN has bf16 kernels: AMX / AVX512-BF16), else fp32. On a CPU without them bf16 is
  emulated and many times slower (measured 16× on an AVX2 EPYC), so it is never chosen there. Point (toy) models
  stay fp32: they gain nothing and their exact metrics are read at fp32 precision. Ratios, normalisers and the
  surrogate are computed in fp32 under autocast either way (the kernels upcast).
- ``run.channels_last: auto`` → UNet weights and inputs in channels-last memory format (oneDNN/cuDNN's preferred
  layout; measured 1.39× on a UNet forward here), off for MLPs.
- ``run.compile`` → ``torch.compile`` of each trained network in place (state-dict keys unchanged).
- ``run.fused_optimizer: auto`` → AdamW(fused=True) (one kernel for the whole parameter update) on CUDA; on the CPU
  it measured 4–7% slower per step than the default for-each implementation, so ``auto`` leaves it off there.
- ``optim.reuse_generator_samples`` (distillation) → the fake-score update trains on the generator step's samples,
  saving one generator pass per generator step (DMD2's order).
None of these changes the math: tests/test_performance.py compares losses and updates with the plain path.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

AUTO_BOOL = ("auto", True, False)


@functools.cache
def native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_mixed_precision(setting: str, image_data: bool) -> str:
    if setting != "auto":
        return setting
    return "bf16" if image_data and native_bf16(default_device_type()) else "no"


def is_image_source(spec: str) -> bool:
    """Data sources that hold images (toy sources and analytic teachers are points)."""
    kind = (spec or "").partition(":")[0]
    return kind not in ("", "toy", "analytic", "none")


def teacher_is_image_model(spec: str) -> bool:
    """A ``pipeline:<dir>`` (or ``<dir>``) teacher whose denoiser is a UNet: gendiv's UNetDenoiser or a diffusers unet."""
    kind, _, arg = (spec or "").partition(":")
    folder = Path(arg if kind == "pipeline" else spec or "")
    try:
        if (folder / "denoiser" / "config.json").is_file():  # a gendiv pipeline
            return json.loads((folder / "denoiser" / "config.json").read_text()).get("_class_name") == "UNetDenoiser"
        return (folder / "model_index.json").is_file() and "unet" in json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False


def apply_memory_format(module: torch.nn.Module, setting) -> torch.nn.Module:
    """channels_last for every diffusers UNet inside ``module`` (``auto``/True), in place."""
    if setting in ("auto", True):
        for sub in module.modules():
            if type(sub).__name__ in ("UNet2DModel", "UNet2DConditionModel"):
                sub.to(memory_format=torch.channels_last)
    return module


def apply_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    if enabled:
        module.compile()
    return module


def adamw(params, lr: float, betas, weight_decay: float, fused) -> torch.optim.Optimizer:
    params = list(params)
    # auto: CUDA only; on the CPU the fused AdamW measured slower than the for-each one (eval/bench.py step)
    use_fused = fused is True or (fused == "auto" and all(p.is_cuda and p.is_floating_point() for p in params))
    if use_fused:
        try:
            return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):
            if fused is True:
                raise
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
