"""Stock diffusers models and pipeline folders as gendiv denoisers (teachers).

The parameterisation and prediction type come from the scheduler's config, never from a default:

- beta-schedule schedulers (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC, PNDM, LMS, ...): a VP model
  x_t = α_t x₀ + σ_t ε at the training timesteps (methods.md §0), ``prediction_type`` epsilon, v_prediction or sample;
- EDM schedulers (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): EDM preconditioning with the scheduler's
  σ_data, c_noise = ln(σ)/4 as the timestep;
- FlowMatchEulerDiscreteScheduler: rectified flow x_t = (1 − t)x₀ + tε, velocity v = ε − x₀ at timestep 1000·t.

The wrapped denoiser's x̂₀ equals the scheduler's own ``pred_original_sample`` (tests/test_from_diffusers.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from .denoiser import UNET_CLASSES, UNetDenoiser

EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
VP_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")


def denoiser_kwargs_from_scheduler(scheduler, where: str = "the scheduler") -> dict:
    """UNetDenoiser keyword arguments (parameterization, prediction type, schedule) for a diffusers scheduler."""
    name, cfg = type(scheduler).__name__, scheduler.config
    pred = cfg.get("prediction_type", "epsilon")
    if name in EDM_SCHEDULERS:
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{where}: {name} with prediction_type={pred!r} is not supported (epsilon, v_prediction, sample)")
        return {"parameterization": "edm", "prediction_type": pred, "sigma_data": float(cfg.sigma_data), "c_noise_scale": 1.0}
    if name in FLOW_SCHEDULERS:
        if cfg.get("invert_sigmas"):
            raise ValueError(f"{where}: {name} with invert_sigmas=True is not supported")
        return {"parameterization": "flow", "prediction_type": "flow"}
    if "beta_schedule" in cfg:
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{where}: {name} with prediction_type={pred!r} is not supported; gendiv reads epsilon, "
                             "v_prediction or sample models with a beta schedule")
        schedule = {k: cfg[k] for k in VP_KEYS if k in cfg and cfg[k] is not None}
        if schedule.get("rescale_betas_zero_snr"):
            raise ValueError(f"{where}: {name} with rescale_betas_zero_snr=True (σ_T = ∞) has no finite EDM σ_max; "
                             "not supported")
        schedule.pop("rescale_betas_zero_snr", None)
        return {"parameterization": "vp", "prediction_type": pred, "vp_schedule": schedule}
    raise ValueError(f"{where}: unsupported scheduler {name}; gendiv wraps beta-schedule (DDPM-family), EDM and "
                     "flow-matching schedulers")


def denoiser_from_unet_and_scheduler(unet, scheduler, num_classes: int | None = None, where: str = "") -> UNetDenoiser:
    """A stock diffusers UNet with its scheduler as a gendiv denoiser (weights copied).

    A class-conditional UNet2DModel (``num_class_embeds`` = n) is read as n − 1 classes plus gendiv's null class at
    index n − 1 unless ``num_classes`` says otherwise.
    """
    where = where or type(unet).__name__
    if type(unet).__name__ not in UNET_CLASSES:
        raise ValueError(f"{where}: the denoising network is a {type(unet).__name__}; gendiv wraps "
                         f"{sorted(UNET_CLASSES)}")
    embeds = unet.config.get("num_class_embeds")
    if num_classes is None and embeds:
        num_classes = embeds - 1
    return UNetDenoiser.from_unet(unet, num_classes=num_classes, **denoiser_kwargs_from_scheduler(scheduler, where))


def is_diffusers_pipeline_folder(path) -> bool:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    from ..pipelines.loading import GENDIV_PIPELINES

    return json.loads(index.read_text()).get("_class_name", "") not in GENDIV_PIPELINES


def denoiser_from_pipeline_folder(path) -> UNetDenoiser:
    """A saved diffusers pipeline folder (``DDPMPipeline``, ``DDIMPipeline``, any with ``unet`` + ``scheduler``)."""
    import diffusers

    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ValueError(f"{path} is neither a diffusers nor a gendiv pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    kind = index.get("_class_name", "?")
    if "vae" in index or "text_encoder" in index:
        raise ValueError(f"{path}: {kind} is a latent/text-conditioned pipeline (vae, text_encoder); load it with "
                         "gendiv.models.latent_text_teacher_from_folder (distillation: teacher.source + teacher.prompts)")
    missing = [c for c in ("unet", "scheduler") if c not in index]
    if missing:
        raise ValueError(f"{path}: {kind} has no {' and no '.join(missing)} component; gendiv needs a pipeline with a "
                         "UNet and its scheduler")
    components = {}
    for name in ("unet", "scheduler"):
        library, class_name = index[name]
        cls = getattr(diffusers, class_name, None)
        if library != "diffusers" or cls is None:
            raise ValueError(f"{path}: component {name} is {library}.{class_name}, not a diffusers class gendiv can load")
        components[name] = cls.from_pretrained(path / name)
    return denoiser_from_unet_and_scheduler(components["unet"], components["scheduler"], where=f"{path} ({kind})")
