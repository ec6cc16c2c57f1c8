"""Distillation methods, one file per family, on one contract (``contract.py``) and one module of shared losses
(``losses.py``). Every module of this package is imported here, so a method file registers its methods by existing.
"""
import importlib
import pkgutil

from .contract import METHODS, STUDENT, DistillMethod, MethodSetup, NetworkFactory, StepDraws, Update, build_method, method_class
from .divergences import DIVERGENCES, Divergence, get_divergence, h_derivatives, h_from_f
from .losses import (EncoderDiscriminator, StepContext, fake_score_and_discriminator_loss, pseudo_huber,
                     score_difference_step, surrogate_loss)
from .options import MethodOptions, SigmaSampler

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .dmd import DMD, DMD2  # noqa: E402
from .f_distill import FDistill  # noqa: E402
from .score_difference import DiffInstruct, ScoreDifferenceMethod  # noqa: E402
from .score_identity import SiD, SiDA, UniInstruct, sample_weight, sid_per_sample  # noqa: E402
from .score_of_mixture import SMD, SMT, alpha_condition, mixture_denoising_loss, sample_alpha, smt_pseudo_gradient  # noqa: E402

__all__ = ["METHODS", "STUDENT", "DistillMethod", "MethodSetup", "NetworkFactory", "StepDraws", "Update", "build_method",
           "method_class", "DIVERGENCES", "Divergence", "get_divergence", "h_derivatives", "h_from_f",
           "EncoderDiscriminator", "StepContext", "fake_score_and_discriminator_loss", "pseudo_huber",
           "score_difference_step", "surrogate_loss", "MethodOptions", "SigmaSampler", "DMD", "DMD2", "FDistill",
           "DiffInstruct", "ScoreDifferenceMethod", "SiD", "SiDA", "UniInstruct", "sample_weight", "sid_per_sample",
           "SMD", "SMT", "alpha_condition", "mixture_denoising_loss", "sample_alpha", "smt_pseudo_gradient"]
