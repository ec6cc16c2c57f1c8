from .pipeline_edm import GenDivPipeline
from .pipeline_one_step import OneStepPipeline
from .pipeline_reflected import ReflectedDiffusionPipeline
from .loading import load_pipeline  # noqa: E402

__all__ = ["GenDivPipeline", "OneStepPipeline", "ReflectedDiffusionPipeline", "load_pipeline"]
