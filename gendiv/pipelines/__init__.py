from .pipeline_edm import GenDivPipeline
from .pipeline_one_step import OneStepPipeline

__all__ = ["GenDivPipeline", "OneStepPipeline"]
