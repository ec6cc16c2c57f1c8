"""Classifier-free guidance (diffusers convention, methods.md §5): D_s = D(x|∅) + s·(D(x|c) − D(x|∅)).

The null pass uses the denoiser's reserved null class (``Condition.drop``), the same index label dropout trains, or for a
text-conditioned denoiser its stored null-prompt ("") embedding, as StableDiffusionPipeline's negative prompt.
"""
from __future__ import annotations

from .base import Guidance, require_labels


class ClassifierFreeGuidance(Guidance):
    def negative_condition(self, cond, batch, device):
        require_labels(self, cond, "classifier-free guidance", allow_text=True)
        return cond.with_null()
