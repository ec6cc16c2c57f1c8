"""What gendiv's four pipelines share beyond ``DiffusionPipeline``: the saved-folder route through stock diffusers,
diffusers' step-end callbacks, and memory switches that reach the networks nested inside gendiv's models.

Loading. diffusers 0.42.1 resolves a ``model_index.json`` ``_class_name`` inside its own package, except a pair
``[module, class]`` naming a ``module.py`` saved in the folder (its route for pipelines defined elsewhere). A gendiv
folder therefore carries ``["gendiv_pipeline", "<Class>"]`` and a one-line ``gendiv_pipeline.py`` that imports the
class from the installed gendiv, so ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it;
gendiv's own classes read the pair as the class name and never execute the folder's file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

LOADER_MODULE = "gendiv_pipeline"
LOADER_SOURCE = (
    '"""diffusers\' route to a gendiv pipeline: model_index.json names this file and the class, which comes from\n'
    'the installed gendiv package (DiffusionPipeline.from_pretrained(folder, trust_remote_code=True))."""\n'
    "from gendiv.pipelines import *  # noqa: F401,F403\n")


def saved_class_name(index: dict) -> str | None:
    """The pipeline class a ``model_index.json`` dict names: a plain ``_class_name`` or gendiv's
    ``[gendiv_pipeline, Class]`` pair."""
    name = index.get("_class_name")
    if isinstance(name, (list, tuple)) and len(name) == 2 and name[0] == LOADER_MODULE:
        return name[1]
    return name


class PipelineBase(DiffusionPipeline):
    """The diffusers habits every gendiv pipeline keeps (see the module docstring)."""

    _callback_tensor_inputs = ["latents"]

    # --- saving and loading --------------------------------------------------------------------------------------
    def to_json_string(self) -> str:
        index = json.loads(super().to_json_string())
        index["_class_name"] = [LOADER_MODULE, type(self).__name__]
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory, *args, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """As diffusers', with gendiv's ``[module, class]`` pair read as the class name: loading through a gendiv
        class takes diffusers' ordinary route and executes nothing from the folder."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if "_class_name" in config:
            config["_class_name"] = saved_class_name(config)
        return out

    # --- diffusers' callback_on_step_end --------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    def _callback_names(self, callback, tensor_inputs) -> list[str]:
        """The tensors a step-end callback receives, checked against ``_callback_tensor_inputs``."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        if callback is not None and not callable(callback):
            raise ValueError(f"callback_on_step_end must be callable, got {callback!r}")
        names = list(tensor_inputs or [])
        unknown = [n for n in names if n not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not tensors of "
                             f"{type(self).__name__}; choose from {self._callback_tensor_inputs}")
        return names

    def _step_end(self, callback, names, i, t, tensors: dict) -> dict:
        """diffusers' semantics: ``callback(pipe, i, t, {name: tensor})`` returns a dict whose entries replace them."""
        if callback is None:
            return tensors
        returned = callback(self, i, t, {n: tensors[n] for n in names})
        if not isinstance(returned, dict):
            raise ValueError(f"callback_on_step_end must return a dict of tensors, got {type(returned).__name__}")
        return {**tensors, **{k: v for k, v in returned.items() if k in tensors}}

    # --- memory switches: reach the diffusers networks inside gendiv's models, or say they do not apply -----------
    def _modules(self):
        for component in self.components.values():
            if isinstance(component, torch.nn.Module):
                yield from component.modules()

    def set_attention_slice(self, slice_size):
        """diffusers slices the pipeline's top-level networks only; gendiv's models wrap theirs (a UNet inside a
        denoiser inside a generator), so every nested diffusers model that slices attention is reached."""
        slicers = [m for m in self._modules() if isinstance(m, ModelMixin) and hasattr(m, "set_attention_slice")]
        if not slicers:
            raise ValueError(f"attention slicing does not apply to this {type(self).__name__}: none of its networks "
                             f"({self._describe_networks()}) is a diffusers model with sliceable attention")
        for network in slicers:
            network.set_attention_slice(slice_size)

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None):
        if not any(isinstance(m, (Attention, AttentionModuleMixin)) for m in self._modules()):
            raise ValueError(f"xformers attention does not apply to this {type(self).__name__}: none of its networks "
                             f"({self._describe_networks()}) has attention layers")
        super().set_use_memory_efficient_attention_xformers(valid, attention_op)

    def _describe_networks(self) -> str:
        return ", ".join(f"{name}: {type(m).__name__}" for name, m in self.components.items()
                         if isinstance(m, torch.nn.Module))
