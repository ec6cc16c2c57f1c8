"""Exponential moving averages of trained weights: a constant decay, or EDM2's power-function EMA.

A constant decay β averages over a fixed number of updates (≈ 1/(1 − β)) however long the run is, so it lags early in a
short run and forgets too fast in a long one. The power-function EMA (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", §3.1; docs/methods.md §12) instead averages over a fixed *fraction* of the
run: after t updates the average weighs update i in proportion to about i^γ, so its width grows with t. It is
parameterised by σ_rel, the standard deviation of that weight profile relative to t (EDM2 reports 0.05–0.15 as good
values).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_RELATIVE_STD = 12 ** -0.5  # σ_rel of the uniform average (γ = 0); larger widths need γ < 0


def relative_std(gamma: float) -> float:
    """σ_rel of the profile (γ+1)·x^γ on x = i/t ∈ [0, 1]: √((γ+1) / ((γ+2)²(γ+3))) (EDM2 Eq. 3)."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def power_exponent(std: float) -> float:
    """γ ≥ 0 with relative_std(γ) = ``std``: the largest real root of γ³ + 7γ² + (16 − s⁻²)γ + (12 − s⁻²) = 0
    (EDM2 Eq. 3 squared and multiplied out)."""
    if not 0 < std <= MAX_RELATIVE_STD:
        raise ValueError(f"power EMA relative std must be in (0, {MAX_RELATIVE_STD:.4f}], got {std}")
    inv = std ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(0.0, roots[np.abs(roots.imag) < 1e-9].real.max()))


def power_beta(t: int, gamma: float) -> float:
    """The decay of the t-th update (t = 1, 2, …): β_t = (1 − 1/t)^(γ+1). Unrolled, the average after t updates is
    Σᵢ wᵢθᵢ with wᵢ = (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1), the exact discrete form of the profile ∝ i^γ."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


@dataclass(frozen=True)
class EmaProfile:
    """``decay``: the constant β used when ``std`` is None; ``std``: σ_rel of a power-function EMA (replaces β)."""

    decay: float = 0.99
    std: float | None = None

    def beta(self, t: int) -> float:
        """Decay of the EMA's t-th update (t counts the updates of the averaged network, from 1)."""
        if self.std is None:
            return self.decay
        return power_beta(t, power_exponent(self.std))

    def describe(self) -> str:
        return f"power EMA σ_rel {self.std:g}" if self.std is not None else f"EMA {self.decay:g}"

