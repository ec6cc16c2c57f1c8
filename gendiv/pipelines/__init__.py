from .pipeline_edm import GenDivPipeline

__all__ = ["GenDivPipeline"]
