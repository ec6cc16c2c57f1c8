"""The score-difference computation every distillation method shares, in three interchangeable backends.

    c_i = mean_CHW |x_i − Dᵀ_i|                 (DMD's per-sample normaliser; 1 when disabled)
    g_i = w_i · (Dᶠ_i − Dᵀ_i) / (c_i + ε)       (w_i: the method's per-sample weight, e.g. ĥ(r_i) or 1)

Since s_p − s_q = (Dᵀ − Dᶠ)/σ², g is −w·(σ²/c)·(s_p − s_q): the generator's pseudo-gradient (docs/methods.md §1).
``eager`` is the reference; ``compile`` fuses it with torch.compile (CPU and CUDA); ``triton`` is one program
per sample (two passes over the row) on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` for tests; ``cpp`` is a
hand-written C++ loop on the CPU (``native_cpu.py``, built on first use). All backends compute in float32 (eager
and compile keep float64 inputs in float64, for exact tests).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("eager", "compile", "triton", "cpp")


def _at_least_fp32(t):
    return t.to(torch.promote_types(t.dtype, torch.float32))


def weighted_difference_eager(x, d_teacher, d_fake, weight, normalize: bool = True, eps: float = 1e-6):
    x, d_teacher, d_fake = _at_least_fp32(x), _at_least_fp32(d_teacher), _at_least_fp32(d_fake)
    shape = (-1,) + (1,) * (x.ndim - 1)
    if normalize:
        c = (x - d_teacher).abs().flatten(1).mean(1)
        scale = _at_least_fp32(weight) / (c + eps)
    else:
        scale = _at_least_fp32(weight) / (1 + eps)
    return (d_fake - d_teacher) * scale.view(shape)


@functools.cache
def _compiled():
    return torch.compile(weighted_difference_eager, dynamic=False, fullgraph=True)


def weighted_difference_compiled(x, d_teacher, d_fake, weight, normalize: bool = True, eps: float = 1e-6):
    return _compiled()(x, d_teacher, d_fake, weight, normalize, eps)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, t_ptr, f_ptr, w_ptr, g_ptr, n_cols, eps, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = row.to(tl.int64) * n_cols
        c = 1.0
        if NORMALIZE:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < n_cols
                xv = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
                tv = tl.load(t_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
                acc += tl.abs(xv - tv)
            c = tl.sum(acc, axis=0) / n_cols
        scale = tl.load(w_ptr + row).to(tl.float32) / (c + eps)
        for start in range(0, n_cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_cols
            tv = tl.load(t_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            fv = tl.load(f_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(g_ptr + base + offs, (fv - tv) * scale, mask=mask)

    return kernel


def weighted_difference_triton(x, d_teacher, d_fake, weight, normalize: bool = True, eps: float = 1e-6):
    if not triton_available():
        raise RuntimeError("the triton backend needs CUDA (or TRITON_INTERPRET=1 for CPU tests)")
    batch = x.shape[0]
    x2, t2, f2 = (a.reshape(batch, -1).contiguous() for a in (x, d_teacher, d_fake))
    n_cols = x2.shape[1]
    g = torch.empty(x2.shape, dtype=torch.float32, device=x.device)
    block = min(4096, 1 << (n_cols - 1).bit_length())
    _triton_kernel()[(batch,)](x2, t2, f2, weight.float().contiguous(), g, n_cols, eps, NORMALIZE=normalize, BLOCK=block)
    return g.view(x.shape)


def weighted_difference_cpp(x, d_teacher, d_fake, weight, normalize: bool = True, eps: float = 1e-6):
    from .native_cpu import weighted_difference_cpp as impl

    return impl(x, d_teacher, d_fake, weight, normalize, eps)


_IMPLS = {"eager": weighted_difference_eager, "compile": weighted_difference_compiled, "triton": weighted_difference_triton,
          "cpp": weighted_difference_cpp}


def resolve_backend(backend: str, device, ndim: int | None = None) -> str:
    """``auto``: Triton on CUDA (torch.compile where Triton is missing), eager on the CPU: measured in a whole DMD
    step on the CPU (eval/bench.py step), a compiled call's dispatch and guards cost more than the ~100 µs it saves,
    and ``cpp`` is opt-in because it builds a C++ extension on first use (README, Speed)."""
    if backend == "auto":
        if torch.device(device).type != "cuda":
            return "eager"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "compile"
        return "triton"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose auto or one of {BACKENDS}")
    if backend == "cpp" and torch.device(device).type != "cpu":
        raise ValueError("kernel backend cpp runs on the CPU; use compile or triton on CUDA")
    return backend


def weighted_difference(x, d_teacher, d_fake, weight=None, normalize: bool = True, eps: float = 1e-6,
                        backend: str = "eager"):
    """g = w·(Dᶠ − Dᵀ)/(mean|x − Dᵀ| + ε) per sample, with the chosen backend. Shapes must match."""
    if not (x.shape == d_teacher.shape == d_fake.shape):
        raise ValueError(f"generator sample, teacher and fake denoisings must have one shape; got {tuple(x.shape)}, "
                         f"{tuple(d_teacher.shape)}, {tuple(d_fake.shape)}")
    if weight is None:
        weight = torch.ones(x.shape[0], device=x.device)
    if weight.shape != (x.shape[0],):
        raise ValueError(f"weight must have shape [{x.shape[0]}], got {tuple(weight.shape)}")
    return _IMPLS[resolve_backend(backend, x.device, x.ndim)](x, d_teacher, d_fake, weight, normalize, eps)
