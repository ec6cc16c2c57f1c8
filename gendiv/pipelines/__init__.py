from .pipeline_edm import GenDivPipeline
from .pipeline_one_step import OneStepPipeline
from .pipeline_one_step_text import OneStepTextToImagePipeline
from .pipeline_reflected import ReflectedDiffusionPipeline
from .pipeline_mirror_flow import MirrorFlowMatchingPipeline
from .pipeline_few_step import FewStepPipeline, FewStepScheduler
from .loading import GENDIV_PIPELINES, load_pipeline, read_class_name  # noqa: E402

__all__ = ["GenDivPipeline", "OneStepPipeline", "OneStepTextToImagePipeline", "ReflectedDiffusionPipeline",
           "MirrorFlowMatchingPipeline",
           "FewStepPipeline", "FewStepScheduler",
           "GENDIV_PIPELINES", "load_pipeline", "read_class_name"]
