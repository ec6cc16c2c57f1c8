"""Classifier-free guidance (diffusers convention, docs/methods.md §5): D_s = D(x|∅) + s·(D(x|c) − D(x|∅)).

The null pass uses the denoiser's reserved null class (``Condition.drop``), the same index label dropout trains, or for a
text-conditioned denoiser its stored null-prompt ("") embedding, as StableDiffusionPipeline's negative prompt.
diffusers' ``ClassifierFreeGuidance`` is the same formula as a diffusers guider (it combines two predictions a pipeline
made); this class is a denoiser that makes both passes itself.
"""
from __future__ import annotations

from .base import GuidedDenoiser, require_labels


class ClassifierFreeGuidedDenoiser(GuidedDenoiser):
    def negative_condition(self, cond, batch, device):
        require_labels(self, cond, "classifier-free guidance", allow_text=True)
        return cond.with_null()
