"""Inception Score and IS∞ on classifier logits (float64, NumPy).

IS = exp(E_x KL(p(y|x) ‖ p(y))), with p(y) the mean of p(y|x) over the evaluated set (Salimans et al. 2016, §4).
Finite-N IS is biased, because p(y) is estimated from the same N samples; IS∞ (Chong & Forsyth 2020, "Effectively
Unbiased FID and Inception Score and where to find them", §3) evaluates IS_N on random subsets, fits
IS_N = IS∞ + slope/N and reads the intercept, as FID∞ does.
"""
from __future__ import annotations

import numpy as np

from .frechet import extrapolate_in_inverse_n, subset_curve


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, classes] with at least 2 classes, got shape {logits.shape}")
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def _score(log_p: np.ndarray) -> float:
    """exp of the mean KL(p(y|x) ‖ p̂(y)), p̂(y) = mean over these rows."""
    p = np.exp(log_p)
    log_marginal = np.log(p.mean(0))
    return float(np.exp((p * (log_p - log_marginal)).sum(1).mean()))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS as usually reported: mean and standard deviation of the score over ``splits`` equal consecutive parts."""
    log_p = log_softmax(logits)
    if not 1 <= splits <= len(log_p):
        raise ValueError(f"splits must be between 1 and the number of samples ({len(log_p)}), got {splits}")
    n = len(log_p)
    scores = [_score(log_p[i * n // splits:(i + 1) * n // splits]) for i in range(splits)]  # torch-fidelity's parts
    return float(np.mean(scores)), float(np.std(scores))


def is_infinity(logits: np.ndarray, n_points: int = 15, n_min: int = 5000, seed: int = 0):
    """IS∞: IS_N (one split) on random subsets at ``n_points`` sizes in [n_min, N], fitted linearly in 1/N;
    returns (intercept IS∞, slope, list of (N, IS_N))."""
    points = subset_curve(log_softmax(logits), _score, n_points, n_min, seed, "IS∞")
    intercept, slope = extrapolate_in_inverse_n(points)
    return intercept, slope, points
