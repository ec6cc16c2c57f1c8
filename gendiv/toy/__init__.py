from .distributions import (DISTRIBUTIONS, REFLECTED_DISTRIBUTIONS, AnalyticDenoiser, BoxMixture, ReflectedBoxMixture, ComponentMixture, GaussianMixture, checkerboard,
                            conditional2d, get_distribution, mixture16d, ring8_imbalanced)
from .classifier import AnalyticClassifier
from .metrics import exact_metrics, mean_log_likelihood, mode_recall, sliced_wasserstein2

__all__ = ["AnalyticClassifier", "DISTRIBUTIONS", "REFLECTED_DISTRIBUTIONS", "AnalyticDenoiser", "BoxMixture", "ReflectedBoxMixture", "ComponentMixture", "GaussianMixture", "checkerboard",
           "conditional2d", "get_distribution", "mixture16d", "ring8_imbalanced", "exact_metrics",
           "mean_log_likelihood", "mode_recall", "sliced_wasserstein2"]
