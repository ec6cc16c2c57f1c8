from .denoising import denoising_loss, weighted_denoising_error
from .distill import (METHODS, DiffInstruct, DistillationMethod, DMD, DMD2, FDistill, StepContext, build_method,
                      score_difference_step, surrogate_loss)
from .divergences import DIVERGENCES, Divergence, get_divergence, h_from_f

__all__ = ["denoising_loss", "weighted_denoising_error", "METHODS", "DiffInstruct", "DistillationMethod", "DMD", "DMD2", "FDistill", "StepContext",
           "build_method", "score_difference_step", "surrogate_loss", "DIVERGENCES", "Divergence", "get_divergence",
           "h_from_f"]
