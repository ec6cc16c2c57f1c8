from .pipeline_edm import GenDivPipeline
from .pipeline_one_step import OneStepPipeline
from .pipeline_reflected import ReflectedDiffusionPipeline

__all__ = ["GenDivPipeline", "OneStepPipeline", "ReflectedDiffusionPipeline"]
