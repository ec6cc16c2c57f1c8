"""Guidance: ``*GuidedDenoiser`` classes are gendiv guiders (a denoiser in, a guided denoiser out: they work in every
sampler, pipeline and teacher call); ``*Guider`` classes are diffusers guiders (``diffusers.guiders.BaseGuidance``)."""
import warnings

from .base import GuidedDenoiser
from .cfg import ClassifierFreeGuidedDenoiser
from .icg import IndependentConditionGuidedDenoiser
from .interval import SigmaIntervalGuidedDenoiser
from .second_model import AutoGuidedDenoiser, UnconditionalPriorGuidedDenoiser
from .tsg import TimestepGuidedDenoiser
from .classifier import ClassifierGuidedDenoiser, NoiseConditionalClassifier, classifier_loss
from .training_free import ClassifierLogLikelihood, TrainingFreeGuidedDenoiser, sample_time_travel
from .diffusers_guiders import DiffusersGuidedDenoiser, IndependentConditionGuider, SigmaIntervalGuider  # noqa: E402
from .resolve import resolve_guider, target_classes  # noqa: E402
from .from_config import guider_from_config  # noqa: E402
from .adapter import LoraGuidanceAdapter, ResidualGuidanceAdapter  # noqa: E402  (imported: saved folders load)

__all__ = ["GuidedDenoiser", "ClassifierFreeGuidedDenoiser", "IndependentConditionGuidedDenoiser",
           "SigmaIntervalGuidedDenoiser", "AutoGuidedDenoiser", "UnconditionalPriorGuidedDenoiser",
           "TimestepGuidedDenoiser", "ClassifierGuidedDenoiser", "NoiseConditionalClassifier", "classifier_loss",
           "ClassifierLogLikelihood", "TrainingFreeGuidedDenoiser", "sample_time_travel", "DiffusersGuidedDenoiser",
           "IndependentConditionGuider", "SigmaIntervalGuider", "resolve_guider", "target_classes",
           "guider_from_config", "LoraGuidanceAdapter", "ResidualGuidanceAdapter"]

# Names before the two hierarchies were told apart (issue 20); importable, with a DeprecationWarning.
DEPRECATED_NAMES = {
    "Guidance": "GuidedDenoiser", "ClassifierFreeGuidance": "ClassifierFreeGuidedDenoiser",
    "IndependentConditionGuidance": "IndependentConditionGuidedDenoiser",
    "IntervalGuidance": "SigmaIntervalGuidedDenoiser",
    "AutoGuidance": "AutoGuidedDenoiser", "UnconditionalPriorGuidance": "UnconditionalPriorGuidedDenoiser",
    "TimestepGuidance": "TimestepGuidedDenoiser", "DiffusersGuidance": "DiffusersGuidedDenoiser",
}


def __getattr__(name):
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warnings.warn(f"gendiv.guidance.{name} is deprecated; use {new} (a gendiv guider: a denoiser that guides "
                      "another; diffusers' guiders of similar names combine a pipeline's predictions instead)",
                      DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
