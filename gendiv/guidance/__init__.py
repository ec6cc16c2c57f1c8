from .cfg import ClassifierFreeGuidance

__all__ = ["ClassifierFreeGuidance"]
