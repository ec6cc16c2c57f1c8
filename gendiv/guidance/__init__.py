from .base import Guidance
from .cfg import ClassifierFreeGuidance
from .icg import IndependentConditionGuidance
from .interval import IntervalGuidance
from .second_model import AutoGuidance, UnconditionalPriorGuidance
from .tsg import TimestepGuidance

__all__ = ["Guidance", "ClassifierFreeGuidance", "IndependentConditionGuidance", "IntervalGuidance", "AutoGuidance",
           "UnconditionalPriorGuidance", "TimestepGuidance"]
from .diffusers_guiders import DiffusersGuidance, IndependentConditionGuider, SigmaIntervalGuider  # noqa: E402

__all__ += ["DiffusersGuidance", "IndependentConditionGuider", "SigmaIntervalGuider"]
from .resolve import resolve_guider  # noqa: E402

__all__ += ["resolve_guider"]
