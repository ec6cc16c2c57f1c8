"""gendiv: one-step generators, guidance-free sampling and exact-score test beds on diffusers.

Importing gendiv imports every component module, so that pipelines saved with gendiv components load in a
fresh process (diffusers 0.42.1 refuses third-party modules that are not yet imported).
"""
__version__ = "0.1.0"

from . import reflection, space  # noqa: F401
from .condition import Condition
from .guidance import ClassifierFreeGuidedDenoiser
from .models import DiscriminatorHead, MLPDenoiser, OneStepGenerator, UNetDenoiser
from .pipelines import (GenDivPipeline, MirrorFlowMatchingPipeline, OneStepPipeline, OneStepTextToImagePipeline,
                        ReflectedDiffusionPipeline, load_pipeline)
from .mirror import VelocityMLP
from .schedulers import ReflectedODEScheduler, ReflectedSDEScheduler, ThresholdedSDEScheduler
from .toy import AnalyticDenoiser, GaussianMixture, get_distribution

__all__ = ["Condition", "ClassifierFreeGuidedDenoiser", "DiscriminatorHead", "MLPDenoiser", "OneStepGenerator", "UNetDenoiser",
           "GenDivPipeline", "OneStepPipeline", "OneStepTextToImagePipeline", "ReflectedDiffusionPipeline", "load_pipeline",
           "ReflectedODEScheduler", "VelocityMLP", "MirrorFlowMatchingPipeline",
           "ReflectedSDEScheduler", "ThresholdedSDEScheduler", "AnalyticDenoiser",
           "GaussianMixture", "get_distribution"]


def __getattr__(name):  # names renamed in gendiv.guidance stay importable from here, with its DeprecationWarning
    from . import guidance

    if name in guidance.DEPRECATED_NAMES:
        return getattr(guidance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
