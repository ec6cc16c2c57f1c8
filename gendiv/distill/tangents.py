"""Directional derivatives of a network (sCM's and MeanFlow's d/dσ along the probability-flow ODE).

``torch.func.jvp`` computes the exact tangent in one forward pass with dual numbers. Modules it cannot trace
(custom autograd functions without forward-mode rules, some fused kernels) fall back to central finite
differences, with a per-sample step (docs/adding_a_method.md, "Tangents").
"""
from __future__ import annotations

import warnings
from typing import Callable, Literal

import torch

from ..space import append_dims

JVPMode = Literal["auto", "func", "finite_difference"]
_TRACE_ERRORS = (RuntimeError, NotImplementedError, TypeError)


def jvp(fn: Callable, primals: tuple, tangents: tuple, mode: JVPMode = "auto", fd_step: torch.Tensor | None = None):
    """(fn(*primals), ∂fn·tangents) without a graph to the parameters (the result is a stop-gradient target).

    ``fn`` maps batched tensors to a batch [B, ...]; ``fd_step`` [B] is each sample's finite-difference step
    (default 1e-3), scaled onto every primal's tangent: d_i ≈ (fn(p + h_i t) − fn(p − h_i t))_i / 2h_i, exact to O(h²).
    """
    if mode != "finite_difference":
        try:
            with torch.no_grad():
                return torch.func.jvp(fn, primals, tangents)
        except _TRACE_ERRORS as e:
            if mode == "func":
                raise
            warnings.warn(f"torch.func.jvp cannot trace this network ({type(e).__name__}: {e}); using finite "
                          "differences (set method.jvp=finite_difference to silence this)", stacklevel=2)
    return finite_difference_jvp(fn, primals, tangents, fd_step)


@torch.no_grad()
def finite_difference_jvp(fn: Callable, primals: tuple, tangents: tuple, fd_step: torch.Tensor | None = None):
    """Central differences along ``tangents`` with a per-sample step h [B]."""
    batch = primals[0].shape[0]
    h = torch.full((batch,), 1e-3, device=primals[0].device) if fd_step is None else fd_step
    shift = [append_dims(h, t.ndim).to(t.dtype) * t for t in tangents]
    plus = fn(*(p + s for p, s in zip(primals, shift)))
    minus = fn(*(p - s for p, s in zip(primals, shift)))
    return fn(*primals), (plus - minus) / append_dims(2 * h, plus.ndim).to(plus.dtype)
