"""f-divergences and their distillation weights h(r) = f''(r)·r² (docs/methods.md §2).

With r = p_σ/q_σ (teacher over student), ∇_θ D_f(p_σ‖q_σ) = −E[h(r)(s_p − s_q)ᵀ ∂x_σ/∂θ]; reverse KL gives
h ≡ 1 (DMD). Constant factors are irrelevant because the weights are normalised by their batch mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Divergence:
    name: str
    f: Callable[[torch.Tensor], torch.Tensor]      # convex, f(1) = 0
    h: Callable[[torch.Tensor], torch.Tensor]      # f''(r)·r², closed form


def _alpha(a: float) -> Divergence:
    """α-divergence f = (r^α − αr − (1−α))/(α(α−1)), h = r^α; α→0 reverse KL, α→1 forward KL."""
    if a in (0.0, 1.0):
        return DIVERGENCES["reverse_kl" if a == 0 else "forward_kl"]
    return Divergence(f"alpha:{a:g}", lambda r: (r**a - a * r - (1 - a)) / (a * (a - 1)), lambda r: r**a)


DIVERGENCES = {
    "reverse_kl": Divergence("reverse_kl", lambda r: -torch.log(r), lambda r: torch.ones_like(r)),
    "softened_reverse_kl": Divergence("softened_reverse_kl", lambda r: (r + 1) * torch.log((r + 1) / (2 * r)),
                                      lambda r: 1 / (1 + r)),
    "jensen_shannon": Divergence("jensen_shannon", lambda r: r * torch.log(r) - (r + 1) * torch.log((r + 1) / 2),
                                 lambda r: r / (1 + r)),
    "squared_hellinger": Divergence("squared_hellinger", lambda r: (torch.sqrt(r) - 1) ** 2, lambda r: 0.5 * torch.sqrt(r)),
    "forward_kl": Divergence("forward_kl", lambda r: r * torch.log(r), lambda r: r),
    "jeffreys": Divergence("jeffreys", lambda r: (r - 1) * torch.log(r), lambda r: 1 + r),
    "pearson_chi2": Divergence("pearson_chi2", lambda r: (r - 1) ** 2, lambda r: 2 * r**2),
}
ALIASES = {"rkl": "reverse_kl", "kl": "forward_kl", "fkl": "forward_kl", "js": "jensen_shannon",
           "sh": "squared_hellinger", "hellinger": "squared_hellinger", "jf": "jeffreys", "chi2": "pearson_chi2",
           "sf": "softened_reverse_kl", "srkl": "softened_reverse_kl"}


def h_from_f(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """h(r) = f''(r)·r² by double autograd, for a user-supplied elementwise f."""

    def h(r: torch.Tensor) -> torch.Tensor:
        keep_graph = r.requires_grad  # differentiable in r, so h' and h'' (Uni-Instruct) work for callables too
        with torch.enable_grad():
            r_ = r.double() if keep_graph else r.detach().double().requires_grad_()
            (d1,) = torch.autograd.grad(f(r_).sum(), r_, create_graph=True)
            (d2,) = torch.autograd.grad(d1.sum(), r_, create_graph=keep_graph)
            out = d2 * r_**2
        return (out if keep_graph else out.detach()).to(r.dtype)

    return h


def h_derivatives(divergence: Divergence, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, r·h', r²·h'') at r in float64, by autograd of h in u = log r (closed form or from a callable f).

    Uni-Instruct needs only these scaled derivatives. With H(u) = h(eᵘ): r·h' = H' and r²·h'' = H'' − H'. Forming
    them in log r keeps them finite where h' or h'' alone overflow: squared Hellinger's h'' = −r^(−3/2)/8 is −∞ at
    r ≲ 1e-206, and r²·h'' would be 0·(−∞) = NaN; in log r it is −√r/8 → 0.
    """
    with torch.enable_grad():
        u = r.detach().double().log().requires_grad_()
        h = divergence.h(u.exp()) + 0 * u                  # + 0·u keeps a graph for constant h (reverse KL)
        (d1,) = torch.autograd.grad(h.sum(), u, create_graph=True)
        d1 = d1 + 0 * u
        (d2,) = torch.autograd.grad(d1.sum(), u)
    return h.detach(), d1.detach(), (d2 - d1).detach()


def get_divergence(spec) -> Divergence:
    """A name (``jensen_shannon``, ``js``, ``alpha:0.5``, ...), a Divergence, or a callable f(r)."""
    if isinstance(spec, Divergence):
        return spec
    if callable(spec):
        return Divergence(getattr(spec, "__name__", "custom"), spec, h_from_f(spec))
    if not isinstance(spec, str):
        raise TypeError(f"divergence must be a name or a callable f(r), got {type(spec).__name__}")
    key = ALIASES.get(spec.lower(), spec.lower())
    if key.startswith("alpha:"):
        try:
            a = float(key.split(":", 1)[1])
        except ValueError as e:
            raise ValueError(f"bad α in {spec!r}; write e.g. alpha:0.5") from e
        if not math.isfinite(a):
            raise ValueError(f"α must be finite in {spec!r}")
        return _alpha(a)
    if key not in DIVERGENCES:
        raise ValueError(f"unknown divergence {spec!r}; choose one of {sorted(DIVERGENCES)}, their short names "
                         f"{sorted(ALIASES)}, 'alpha:<a>', or pass a callable f(r)")
    return DIVERGENCES[key]
