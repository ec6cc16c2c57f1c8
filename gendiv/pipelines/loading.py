"""Load any saved pipeline folder: gendiv's by their own class, stock diffusers ones by DiffusionPipeline.

diffusers 0.42.1's ``DiffusionPipeline.from_pretrained`` looks a folder's ``_class_name`` up among diffusers' own
classes only (``getattr(diffusers, name)``), so a third-party pipeline class loads through its own
``from_pretrained``; components (gendiv's denoisers and schedulers) load from any pipeline once ``gendiv`` is imported.
"""
from __future__ import annotations

import json
from pathlib import Path

# gendiv's pipeline classes, by the _class_name their saved model_index.json carries
GENDIV_PIPELINES = ("GenDivPipeline", "OneStepPipeline", "OneStepTextToImagePipeline", "ReflectedDiffusionPipeline")


def load_pipeline(path, **kwargs):
    """gendiv's pipeline folders (``GENDIV_PIPELINES``) by their own class; anything else by
    ``DiffusionPipeline.from_pretrained``."""
    from diffusers import DiffusionPipeline

    from .. import pipelines

    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{path} is not a saved pipeline (no model_index.json)")
    name = json.loads(index.read_text()).get("_class_name")
    cls = getattr(pipelines, name) if name in GENDIV_PIPELINES else DiffusionPipeline
    return cls.from_pretrained(str(path), **kwargs)
