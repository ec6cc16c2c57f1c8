from .denoising import denoising_loss, weighted_denoising_error
from .distill import (METHODS, DiffInstruct, DistillationMethod, DistillBatch, DMD, DMD2, EncoderDiscriminator, FDistill,
                      MethodOptions, StepContext, build_method, method_class, score_difference_step, surrogate_loss)
from .divergences import DIVERGENCES, Divergence, get_divergence, h_derivatives, h_from_f
from .guidance_free import draw_beta, gft_conditional, gft_loss, model_guidance_loss
from .score_identity import SiD, SiDA, UniInstruct, sample_weight, sid_per_sample
from .score_of_mixture import SMD, SMT, mixture_denoising_loss, sample_alpha, smt_pseudo_gradient

__all__ = ["denoising_loss", "weighted_denoising_error", "METHODS", "DiffInstruct", "DistillationMethod", "DistillBatch",
           "DMD", "DMD2", "EncoderDiscriminator", "FDistill", "MethodOptions", "StepContext", "build_method",
           "method_class", "score_difference_step", "surrogate_loss", "DIVERGENCES", "Divergence", "get_divergence",
           "h_derivatives", "h_from_f", "SiD", "SiDA", "UniInstruct", "sample_weight", "sid_per_sample",
           "draw_beta", "gft_conditional", "gft_loss", "model_guidance_loss", "SMD", "SMT", "mixture_denoising_loss", "sample_alpha", "smt_pseudo_gradient"]
