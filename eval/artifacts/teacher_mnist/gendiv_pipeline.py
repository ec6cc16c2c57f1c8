"""diffusers' route to a gendiv pipeline: model_index.json names this file and the class, which comes from
the installed gendiv package (DiffusionPipeline.from_pretrained(folder, trust_remote_code=True))."""
from gendiv.pipelines import *  # noqa: F401,F403
