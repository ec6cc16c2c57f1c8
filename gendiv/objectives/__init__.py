from .denoising import denoising_loss
from .distill import (METHODS, DiffInstruct, DistillationMethod, DMD, DMD2, FDistill, StepContext, build_method,
                      score_difference_step, surrogate_loss)
from .divergences import DIVERGENCES, Divergence, get_divergence, h_from_f

__all__ = ["denoising_loss", "METHODS", "DiffInstruct", "DistillationMethod", "DMD", "DMD2", "FDistill", "StepContext",
           "build_method", "score_difference_step", "surrogate_loss", "DIVERGENCES", "Divergence", "get_divergence",
           "h_from_f"]
