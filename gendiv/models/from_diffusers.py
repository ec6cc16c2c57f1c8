"""Stock diffusers models and pipeline folders as gendiv denoisers (teachers).

The parameterisation and prediction type come from the scheduler's config, never from a default:

- beta-schedule schedulers (DDPM, DDIM, Euler, Heun, DPM-Solver, UniPC, PNDM, LMS, ...): a VP model
  x_t = α_t x₀ + σ_t ε at the training timesteps (docs/methods.md §0), ``prediction_type`` epsilon, v_prediction or sample;
- EDM schedulers (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): EDM preconditioning with the scheduler's
  σ_data, c_noise = ln(σ)/4 as the timestep;
- FlowMatchEulerDiscreteScheduler: rectified flow x_t = (1 − t)x₀ + tε, velocity v = ε − x₀ at timestep 1000·t.

The wrapped denoiser's x̂₀ equals the scheduler's own ``pred_original_sample`` (tests/test_from_diffusers.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .denoiser import UNET_CLASSES, UNetDenoiser

EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
VP_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")


def x0_clip_from_scheduler(cfg) -> dict | None:
    """The scheduler's clipping of ``pred_original_sample`` (DDPM, DDIM, LCM: ``clip_sample``; DDPM, DDIM, DPM-Solver,
    UniPC, DEIS: ``thresholding``, which wins over ``clip_sample`` as in their ``step``), for ``clip_x0``."""
    if cfg.get("thresholding"):
        return {"thresholding": True, "dynamic_thresholding_ratio": float(cfg.dynamic_thresholding_ratio),
                "sample_max_value": float(cfg.sample_max_value)}
    if cfg.get("clip_sample"):
        return {"clip_sample_range": float(cfg.get("clip_sample_range", 1.0))}
    return None


def denoiser_kwargs_from_scheduler(scheduler, where: str = "the scheduler") -> dict:
    """Denoiser keyword arguments (parameterization, prediction type, schedule, x̂₀ clipping) for a scheduler."""
    name, cfg = type(scheduler).__name__, scheduler.config
    pred = cfg.get("prediction_type", "epsilon")
    if name in EDM_SCHEDULERS:
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise InputError(f"{where}: {name} with prediction_type={pred!r} is not supported (epsilon, v_prediction, sample)")
        return {"parameterization": "edm", "prediction_type": pred, "sigma_data": float(cfg.sigma_data), "c_noise_scale": 1.0}
    if name in FLOW_SCHEDULERS:
        if cfg.get("invert_sigmas"):
            raise InputError(f"{where}: {name} with invert_sigmas=True is not supported")
        return {"parameterization": "flow", "prediction_type": "flow"}
    if "beta_schedule" in cfg:
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise InputError(f"{where}: {name} with prediction_type={pred!r} is not supported; gendiv reads epsilon, "
                             "v_prediction or sample models with a beta schedule")
        schedule = {k: cfg[k] for k in VP_KEYS if k in cfg and cfg[k] is not None}
        if schedule.get("rescale_betas_zero_snr"):
            raise InputError(f"{where}: {name} with rescale_betas_zero_snr=True (σ_T = ∞) has no finite EDM σ_max; "
                             "not supported")
        schedule.pop("rescale_betas_zero_snr", None)
        return {"parameterization": "vp", "prediction_type": pred, "vp_schedule": schedule,
                "x0_clip": x0_clip_from_scheduler(cfg)}
    raise InputError(f"{where}: unsupported scheduler {name}; gendiv wraps beta-schedule (DDPM-family), EDM and "
                     "flow-matching schedulers")


def denoiser_from_unet_and_scheduler(unet, scheduler, num_classes: int | None = None, where: str = "",
                                     null_class: int | None = None) -> UNetDenoiser:
    """A stock diffusers UNet with its scheduler as a gendiv denoiser (weights copied).

    A class-conditional UNet2DModel (``num_class_embeds`` = n) has no standard null class, so it must be told which
    embedding row is the unconditional one: ``null_class`` = k (gendiv's own convention is k = n − 1), or
    ``num_classes`` = n − 1 (the same as k = n − 1). With k < n − 1 the rows are reordered so that the null comes last,
    and the folder's labels above k are gendiv's labels plus one (n − 1 real classes, numbered without k).
    """
    where = where or type(unet).__name__
    if type(unet).__name__ not in UNET_CLASSES:
        raise InputError(f"{where}: the denoising network is a {type(unet).__name__}; gendiv wraps "
                         f"{sorted(UNET_CLASSES)}")
    _refuse_learned_variance(unet, scheduler, where)
    embeds = unet.config.get("num_class_embeds")
    if embeds and num_classes is None:
        if null_class is None:
            raise InputError(f"{where}: the UNet has num_class_embeds={embeds} but no stated null class; give "
                             f"null_class=<index in 0..{embeds - 1}> (teacher.null_class; {embeds - 1} if the last "
                             "embedding is the unconditional one, as in gendiv-trained teachers)")
        if not 0 <= null_class < embeds:
            raise InputError(f"{where}: null_class={null_class} is outside the UNet's {embeds} class embeddings")
        num_classes = embeds - 1
        if null_class != embeds - 1:
            unet = _null_class_last(unet, null_class)
    elif null_class is not None and null_class != num_classes:
        raise InputError(f"{where}: null_class={null_class} given for a UNet with num_class_embeds={embeds}")
    return UNetDenoiser.from_unet(unet, num_classes=num_classes, **denoiser_kwargs_from_scheduler(scheduler, where))


def _refuse_learned_variance(unet, scheduler, where: str):
    variance = scheduler.config.get("variance_type")
    out_channels = unet.config.get("out_channels") or unet.config.in_channels
    if variance in ("learned", "learned_range") or out_channels == 2 * unet.config.in_channels:
        raise InputError(f"{where}: a learned-variance DDPM (scheduler variance_type={variance!r}, UNet out_channels="
                         f"{out_channels} for {unet.config.in_channels} input channels): its sampler draws with the "
                         "network's predicted variance, which gendiv's samplers and distillation do not model; refused")


def _null_class_last(unet, null_class: int):
    """A copy of ``unet`` whose class-embedding rows are reordered so that row ``null_class`` comes last."""
    import copy

    unet = copy.deepcopy(unet)
    weight = unet.class_embedding.weight.data
    order = [i for i in range(weight.shape[0]) if i != null_class] + [null_class]
    unet.class_embedding.weight.data = weight[order].clone()
    return unet


def is_diffusers_pipeline_folder(path) -> bool:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    from ..pipelines.loading import GENDIV_PIPELINES, read_class_name

    return read_class_name(path) not in GENDIV_PIPELINES


PIXEL_COMPONENTS = ("unet", "scheduler")


def denoiser_from_pipeline_folder(path, null_class: int | None = None) -> UNetDenoiser:
    """A saved pixel-space diffusers pipeline folder (``DDPMPipeline``, ``DDIMPipeline``, any with only ``unet`` +
    ``scheduler``). Latent, text-conditioned and transformer folders are read by ``gendiv.models.teachers``; folders
    whose denoiser gendiv cannot reproduce are refused naming the component and the reason."""
    import diffusers

    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise InputError(f"{path} is neither a diffusers nor a gendiv pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    kind = index.get("_class_name", "?")
    if "vqvae" in index:
        raise InputError(f"{path}: {kind} has a vqvae component (a VQ-VAE latent diffusion model): its UNet works on "
                         "the VQ-VAE's latents, which gendiv does not model; refused rather than sampled as pixels")
    if "vae" in index or "text_encoder" in index:
        raise InputError(f"{path}: {kind} is a latent/text-conditioned pipeline (vae, text_encoder); load it with "
                         "gendiv.models.teachers.load_teacher (distillation: teacher.source + teacher.prompts)")
    missing = [c for c in PIXEL_COMPONENTS if c not in index]
    if missing:
        raise InputError(f"{path}: {kind} has no {' and no '.join(missing)} component; gendiv needs a pipeline with a "
                         "UNet and its scheduler")
    components = {}
    for name in PIXEL_COMPONENTS:
        library, class_name = index[name]
        cls = getattr(diffusers, class_name, None)
        if library != "diffusers" or cls is None:
            raise InputError(f"{path}: component {name} is {library}.{class_name}, not a diffusers class gendiv can load")
        components[name] = cls.from_pretrained(path / name)
    return denoiser_from_unet_and_scheduler(components["unet"], components["scheduler"], where=f"{path} ({kind})",
                                            null_class=null_class)
