"""What the hardware and PyTorch give a training step, as config switches with per-device defaults (issue 13).

- ``run.mixed_precision: auto`` → bf16 autocast for image models where the device computes bf16 natively (CUDA
  with bf16, or a CPU whose oneDNN has bf16 kernels: AMX / AVX512-BF16), else fp32. On a CPU without them bf16 is
  emulated and many times slower (measured 16× on an AVX2 EPYC), so it is never chosen there; with AVX512-BF16
  alone (an EPYC without AMX) bf16 autocast made the tiny-UNet DMD step faster than fp32 (the step table's bf16
  rows, issue 26), so native bf16 without AMX counts too. Point (toy) models
  stay fp32: they gain nothing and their exact metrics are read at fp32 precision. Ratios, normalisers and the
  surrogate are computed in fp32 under autocast either way (the kernels upcast).
- ``run.channels_last: auto`` → UNet weights in channels-last memory format (oneDNN/cuDNN's preferred layout; on an
  AVX2 CPU it speeds no-grad forwards such as the teacher's and not forward+backward), off for MLPs.
- ``run.compile`` → ``torch.compile`` of each trained network in place (state-dict keys unchanged).
- ``run.fused_optimizer: auto`` → AdamW(fused=True) (one kernel for the whole parameter update) wherever PyTorch has
  it (CUDA and the CPU). On the CPU PyTorch's own default is the per-tensor loop (it picks for-each on accelerators
  only), about 3× slower per update than the fused one.
- ``run.keep_freed_memory: auto`` → on the CPU under glibc, freed tensor memory stays in the process for the next
  allocation (``mallopt``: no mmap below 32 MiB, no trimming) instead of going back to the OS and being page-faulted
  in again, zeroed, on the next pass (tens of thousands of minor page faults per tiny-UNet DMD step without it, none with
  it). The process keeps its peak heap size.
- ``run.threads: auto`` → one intra-op thread for point (toy) models, where an op is microseconds of work and a second
  thread adds a barrier to every op that stalls whenever another process holds a core (issue 26: 57 → 1 step/s on
  2 cores beside one busy process); image models keep PyTorch's default (one thread per core, or $OMP_NUM_THREADS).
  Both measured alone and beside a busy process by ``eval/bench.py threads``. The count is set for the whole process.
- ``optim.reuse_generator_samples`` (distillation) → the fake-score update trains on the generator step's samples,
  saving one generator pass per generator step (DMD2's order).
None of these changes the math: tests/test_performance.py compares losses and updates with the plain path.
Measured per step and per part by ``eval/bench.py step`` (tables in the README).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

AUTO_BOOL = ("auto", True, False)
STARTUP_THREADS = torch.get_num_threads()  # PyTorch's default in this process, before any run changed it


@functools.cache
def native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# glibc mallopt parameters (malloc.h); 32 MiB is the largest mmap threshold glibc accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = {_M_MMAP_THRESHOLD: 32 * 1024 * 1024, _M_TRIM_THRESHOLD: 2 ** 31 - 1}
_GLIBC_DEFAULTS = {_M_MMAP_THRESHOLD: 128 * 1024, _M_TRIM_THRESHOLD: 128 * 1024}


@functools.cache
def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(setting=True) -> bool:
    """Let glibc keep freed memory in the process (``setting`` auto/True; False restores glibc's static defaults).

    PyTorch's CPU allocator is plain malloc: a UNet's activations (MiBs each) are above glibc's mmap threshold, so
    every pass maps fresh pages that the kernel zero-fills on first touch and unmaps them on free. Returns whether
    the setting applied (False off Linux/glibc, or for CUDA training where it does not matter and ``auto`` skips it).
    """
    libc = _glibc()
    if libc is None or (setting == "auto" and default_device_type() == "cuda"):
        return False
    values = _KEEP if setting in ("auto", True) else _GLIBC_DEFAULTS
    return all(libc.mallopt(key, value) == 1 for key, value in values.items())


CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that decide fp32 and bf16 speed (Linux /proc/cpuinfo; [] elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    found = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in found]


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_mixed_precision(setting: str, image_data: bool) -> str:
    if setting != "auto":
        return setting
    return "bf16" if image_data and native_bf16(default_device_type()) else "no"


def resolve_threads(setting, image_data: bool) -> int:
    """``run.threads``: a positive int as given; ``auto`` → 1 for point models, PyTorch's own default for images."""
    if setting != "auto":
        return int(setting)
    return STARTUP_THREADS if image_data else 1


def apply_threads(setting, image_data: bool) -> int:
    """Set this process's intra-op thread count for a training run; returns it."""
    threads = resolve_threads(setting, image_data)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


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
    # auto: fused wherever PyTorch implements it (CUDA, CPU); a device without it falls back to the default
    use_fused = fused is True or (fused == "auto" and all(p.is_floating_point() for p in params))
    if use_fused:
        try:
            return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):
            if fused is True:
                raise
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
