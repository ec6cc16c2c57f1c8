"""Load any saved pipeline folder: gendiv's by their own class, stock diffusers ones by DiffusionPipeline.

A gendiv folder names its class as ``["gendiv_pipeline", "<Class>"]`` (see ``base.py``): stock diffusers loads it with
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``; this loader picks the class itself, so no code
from the folder runs and no flag is needed. Folders saved before the pair was written carry the plain class name.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import saved_class_name

# gendiv's pipeline classes, by the class name their saved model_index.json carries
GENDIV_PIPELINES = ("GenDivPipeline", "OneStepPipeline", "OneStepTextToImagePipeline", "ReflectedDiffusionPipeline",
                    "FewStepPipeline", "MirrorFlowMatchingPipeline")


def read_class_name(path) -> str | None:
    """The pipeline class a saved folder names (gendiv's pair or a plain diffusers name); a clear error without one."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{path} is not a saved pipeline (no model_index.json)")
    return saved_class_name(json.loads(index.read_text()))


def load_pipeline(path, **kwargs):
    """gendiv's pipeline folders (``GENDIV_PIPELINES``) by their own class; anything else by
    ``DiffusionPipeline.from_pretrained``."""
    from diffusers import DiffusionPipeline

    from .. import pipelines

    name = read_class_name(path)
    cls = getattr(pipelines, name) if name in GENDIV_PIPELINES else DiffusionPipeline
    return cls.from_pretrained(str(path), **kwargs)
