"""Teachers from a source string: the one reader of a teacher folder's ``model_index.json``.

``analytic:<toy>`` is a closed-form toy denoiser; ``pipeline:<dir>`` (or a bare ``<dir>``) is a saved gendiv
``GenDivPipeline`` or a stock diffusers pipeline folder, dispatched on the ``_class_name`` and components that its
``model_index.json`` lists.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


def read_model_index(path) -> dict:
    """The folder's ``model_index.json`` as a dict; a clear error when there is none."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise InputError(f"teacher pipeline not found: {path} has no model_index.json (neither a diffusers nor a "
                         "gendiv pipeline folder)")
    return json.loads(index.read_text())


def load_teacher(spec: str, null_class: int | None = None):
    """(teacher denoiser, default real-data source string, LatentTextTeacher or None) from ``analytic:<toy>``,
    ``pipeline:<dir>`` or ``<dir>``.

    A folder may hold a gendiv ``GenDivPipeline``, a stock diffusers pipeline with a UNet and its scheduler
    (``DDPMPipeline``, ``DDIMPipeline``, ...), whose parameterisation is read from the scheduler's config, a latent
    text-conditioned one (``StableDiffusionPipeline``-shaped: the denoiser works on its latents, prompts condition it),
    or one of the DiT, SDXL, SD3 and PixArt families (``pipeline_teachers.py``; the third element is a
    ``PipelineTeacher`` for the text families, None for DiT). ``null_class``: the null class index of a
    class-conditional ``UNet2DModel`` folder (``from_diffusers.denoiser_from_unet_and_scheduler``).
    """
    if spec == "none":
        return None, "", None
    kind, _, arg = spec.partition(":")
    if kind == "analytic":
        from ..toy import AnalyticDenoiser, get_distribution

        try:
            dist = get_distribution(arg)
        except ValueError as e:  # an unknown name: the message lists the known ones
            raise InputError(f"teacher.source: {e}") from None
        return AnalyticDenoiser(dist), f"toy:{arg}", None
    if kind != "pipeline" and Path(spec).is_dir():
        kind, arg = "pipeline", spec
    if kind == "pipeline":
        return _teacher_from_folder(Path(arg), null_class)
    raise InputError(f"unknown teacher source {spec!r}; use analytic:<toy name>, pipeline:<folder> or a folder")


def _teacher_from_folder(path: Path, null_class: int | None):
    from ..pipelines.base import saved_class_name
    from .from_diffusers import denoiser_from_pipeline_folder
    from .latent_text import latent_text_teacher_from_folder
    from .pipeline_teachers import PIPELINE_FAMILIES, pipeline_teacher_from_folder

    index = read_model_index(path)
    class_name = saved_class_name(index)  # gendiv folders name ["gendiv_pipeline", class]
    if class_name == "OneStepPipeline":
        raise InputError(f"teacher.source: {path} is a one-step student (OneStepPipeline), not a multi-step "
                         "teacher; give the folder of a GenDivPipeline (e.g. runs/teacher/pipeline)")
    if class_name == "GenDivPipeline":
        from ..pipelines import GenDivPipeline

        return GenDivPipeline.from_pretrained(str(path)).denoiser, "", None
    if class_name in PIPELINE_FAMILIES:
        teacher = pipeline_teacher_from_folder(path, index)
        return teacher.denoiser, "", (None if teacher.family == "dit" else teacher)
    if "transformer" in index:
        library, network = index["transformer"]
        raise InputError(f"{path}: {class_name} has a transformer component {library}.{network}, whose call gendiv "
                         f"does not know; gendiv reads the transformers of {', '.join(sorted(PIPELINE_FAMILIES))}")
    if "text_encoder" in index:
        text = latent_text_teacher_from_folder(path)
        return text.denoiser, "", text
    return denoiser_from_pipeline_folder(path, null_class), "", None
