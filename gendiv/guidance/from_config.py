"""Guiders from a config mapping (a distillation teacher's ``teacher.guider``, a YAML file), validated key by key.

    {"name": "cfg", "guidance_scale": 2.0}
    {"name": "interval", "sigma_lo": 0.3, "sigma_hi": 5.0, "guider": {"name": "cfg", "guidance_scale": 2.0}}
    {"name": "autoguidance", "guidance_scale": 2.0, "weak_model": "runs/small/pipeline"}
    {"name": "classifier", "guidance_scale": 1.0, "classifier": "runs/classifier"}

Second networks are saved folders (a gendiv pipeline's for denoisers, a ``NoiseConditionalClassifier``'s for
classifiers) or modules given directly.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .base import GuidedDenoiser
from .cfg import ClassifierFreeGuidedDenoiser
from .classifier import ClassifierGuidedDenoiser, NoiseConditionalClassifier
from .icg import IndependentConditionGuidedDenoiser
from .interval import SigmaIntervalGuidedDenoiser
from .second_model import AutoGuidedDenoiser, UnconditionalPriorGuidedDenoiser
from .training_free import ClassifierLogLikelihood, TrainingFreeGuidedDenoiser
from .tsg import TimestepGuidedDenoiser


def _folder(value, key: str) -> str:
    if not isinstance(value, (str, Path)) or not Path(value).is_dir():
        raise ValueError(f"{key}: expected a saved folder, got {value!r} (not a folder)")
    return str(value)


def _denoiser_from(value, key: str):
    if isinstance(value, nn.Module):
        return value
    from ..pipelines import load_pipeline

    return load_pipeline(_folder(value, key)).denoiser


def _classifier_from(value, key: str):
    return value if isinstance(value, nn.Module) else NoiseConditionalClassifier.from_pretrained(_folder(value, key))


# name → (class, {config key: (constructor argument, loader)})
GUIDER_NAMES = {
    "cfg": (ClassifierFreeGuidedDenoiser, {}),
    "icg": (IndependentConditionGuidedDenoiser, {}),
    "tsg": (TimestepGuidedDenoiser, {}),
    "autoguidance": (AutoGuidedDenoiser, {"weak_model": ("weak_denoiser", _denoiser_from)}),
    "unconditional_prior": (UnconditionalPriorGuidedDenoiser, {"prior_model": ("prior_denoiser", _denoiser_from)}),
    "classifier": (ClassifierGuidedDenoiser, {"classifier": ("classifier", _classifier_from)}),
    "training_free": (TrainingFreeGuidedDenoiser, {"classifier": ("classifier", _classifier_from)}),
    "interval": (SigmaIntervalGuidedDenoiser, {}),
}


def _config_error(message: str) -> Exception:
    from ..training.config import ConfigError  # lazily: training imports guidance

    return ConfigError(message)


def guider_from_config(spec: dict, denoiser: nn.Module, where: str = "guider") -> GuidedDenoiser:
    """A gendiv guider over ``denoiser`` from ``spec`` (see the module docstring); a ConfigError names the bad key."""
    if not isinstance(spec, dict):
        raise _config_error(f"{where}: expected a mapping with a 'name', got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in GUIDER_NAMES:
        raise _config_error(f"{where}.name must be one of {sorted(GUIDER_NAMES)}, got {name!r}")
    cls, networks = GUIDER_NAMES[name]
    extra = {"training_free": ("classifier_sigma",), "interval": ("guider",)}.get(name, ())
    allowed = [*cls.config_fields, *networks, *extra]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise _config_error(f"unknown key {unknown[0]!r} in {where} (name: {name}); allowed keys: {sorted(allowed)}")
    missing = sorted(set(networks) - set(spec))
    if missing:
        raise _config_error(f"{where} (name: {name}) needs {missing[0]!r}: a saved folder")
    if name == "interval" and "guider" not in spec:
        raise _config_error(f"{where} (name: interval) needs 'guider': the guider to apply inside the window")
    try:
        kwargs = {arg: load(spec.pop(key), f"{where}.{key}") for key, (arg, load) in networks.items()}
        if name == "interval":
            return cls(guider_from_config(spec.pop("guider"), denoiser, f"{where}.guider"), **spec)
        if name == "training_free":
            classifier = kwargs.pop("classifier")
            kwargs["log_likelihood"] = ClassifierLogLikelihood(classifier, spec.pop("classifier_sigma", None))
        return cls(denoiser, **kwargs, **spec)
    except (ValueError, TypeError, OSError) as e:
        if type(e).__name__ == "ConfigError":
            raise
        raise _config_error(f"{where} (name: {name}): {e}") from None
