"""Diffusion training under accelerate: EDM-weighted denoising (teachers) or reflected score matching on a box.

The objective is a small class chosen by the config's ``objective`` key; the trainer only calls its hooks (loss,
evaluation sampler, exported pipeline) and never branches on its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from ..models import with_scalar_condition
from ..objectives import denoising_loss
from ..objectives.cfg_aware import CFGAwareConfig, cfg_aware_loss
from ..objectives.reflected_likelihood import DIVERGENCES, bits_per_dim, reflected_log_likelihood
from ..objectives.mirror_flow import MirrorFlowConfig, mirror_flow_loss
from ..objectives.denoising_variants import (TeacherLossConfig, input_perturbation_denoising_loss,
                                              pseudo_huber_denoising_loss)
from ..objectives.guidance_free import gft_loss, model_guidance_loss
from ..objectives.reflected import (REFLECTED_SIGMA_SAMPLERS, WEIGHTINGS, reflected_denoising_loss,
                                    sample_reflected_sigma)
from ..pipelines import GenDivPipeline, ReflectedDiffusionPipeline
from ..plotting import image_grid, scatter_plot
from ..reflection import Box
from ..sampling import SAMPLERS, sample
from ..schedulers import ReflectedODEScheduler, ReflectedSDEScheduler
from ..space import SIGMA_SAMPLERS
from ..toy import exact_metrics, sliced_wasserstein2
from ..toy.convex import moment_errors
from ..mirror import VelocityMLP, check_in_domain, dual_dim, inside_mask
from ..pipelines.pipeline_mirror_flow import MirrorFlowMatchingPipeline
from .builders import DataConfig, ModelConfig, build_data, build_model
from .config import ConfigError, check, check_optimizer, to_dict
from .performance import is_image_source
from .data import ToySource, draw_labels
from .ema import EmaProfile
from .loop import RunConfig, TrainingLoop


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    ema_decay: float = 0.995
    ema_std: float | None = None               # σ_rel of EDM2's power-function EMA; replaces ema_decay
    sigma_sampler: str = "lognormal"  # lognormal | karras_index | log_uniform | laplace | cauchy (log-SNR)
    cond_drop_prob: float = 0.1       # label → null class, so the model also learns p(x) for guidance

    def __post_init__(self):
        check_optimizer("optim", [("lr", self.lr)], self.betas, self.weight_decay, self.ema_decay, self.ema_std)
        check(self.sigma_sampler in SIGMA_SAMPLERS,
              f"optim.sigma_sampler must be one of {sorted(SIGMA_SAMPLERS)}, got {self.sigma_sampler!r}")
        check(0 <= self.cond_drop_prob <= 1, f"optim.cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")


@dataclass
class EvalConfig:
    num_samples: int = 2000
    num_steps: int = 18               # Heun with 18 steps = 35 network evaluations (EDM)
    sampler: str = "heun"

    def __post_init__(self):
        check(self.num_samples >= 1, f"eval.num_samples must be ≥ 1, got {self.num_samples}")
        check(self.num_steps >= 1, f"eval.num_steps must be ≥ 1, got {self.num_steps}")
        check(self.sampler in SAMPLERS, f"eval.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")


REFLECTED_SAMPLERS = {"sde": ReflectedSDEScheduler, "ode": ReflectedODEScheduler}


@dataclass
class ReflectedConfig:
    """Reflected diffusion on a box (``objective: reflected``, docs/methods.md §4)."""

    box: list = field(default_factory=lambda: [0.0, 1.0])  # [low, high] in every coordinate; the data must lie inside
    sigma_min: float = 0.01
    sigma_max: float = 5.0
    weighting: str = "sigma2"        # sigma2 | g2 (likelihood weighting = 2 ln(σ_max/σ_min) × sigma2)
    sigma_sampler: str = "log_uniform"  # log_uniform: σ(t), t ~ U (the paper's) | lognormal: EDM's, in units of half the box
    sampler: str = "sde"             # evaluation and exported pipeline: sde | ode
    num_steps: int = 100             # evaluation sampler steps
    likelihood_samples: int = 0      # > 0: evaluation reports the model's NLL/bpd of this many data points (the ODE)
    likelihood_steps: int = 50       # RK4 steps in ln σ of the likelihood ODE (4 denoiser passes each)
    likelihood_divergence: str = "exact"  # exact | hutchinson
    likelihood_mollifier: float | None = None  # bump sharpness: a normalised density even if the score crosses walls

    def __post_init__(self):
        check(isinstance(self.box, list) and len(self.box) == 2 and all(isinstance(v, (int, float)) for v in self.box),
              f"reflected.box must be [low, high], got {self.box!r}")
        check(self.box[1] > self.box[0], f"reflected.box needs high > low, got {self.box}")
        check(0 < self.sigma_min < self.sigma_max, f"reflected: need 0 < sigma_min < sigma_max, got "
              f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        check(self.weighting in WEIGHTINGS, f"reflected.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check(self.sigma_sampler in REFLECTED_SIGMA_SAMPLERS, f"reflected.sigma_sampler must be one of "
              f"{REFLECTED_SIGMA_SAMPLERS}, got {self.sigma_sampler!r}")
        check(self.sampler in REFLECTED_SAMPLERS, f"reflected.sampler must be one of {sorted(REFLECTED_SAMPLERS)}, "
              f"got {self.sampler!r}")
        check(self.num_steps >= 1, f"reflected.num_steps must be ≥ 1, got {self.num_steps}")
        check(self.likelihood_samples >= 0 and self.likelihood_steps >= 1, f"reflected: need likelihood_samples ≥ 0 "
              f"and likelihood_steps ≥ 1, got {self.likelihood_samples}, {self.likelihood_steps}")
        check(self.likelihood_mollifier is None or self.likelihood_mollifier > 0, f"reflected.likelihood_mollifier "
              f"must be > 0 or null, got {self.likelihood_mollifier}")
        check(self.likelihood_divergence in DIVERGENCES, f"reflected.likelihood_divergence must be one of "
              f"{DIVERGENCES}, got {self.likelihood_divergence!r}")


@dataclass
class GuidanceFreeConfig:
    """Guidance-free objectives (``objective: gft`` or ``model_guidance``, docs/methods.md §5)."""

    beta_min: float = 0.0            # gft: β ~ U(beta_min, 1], i.e. guidance scales 1/β up to 1/beta_min
    scale: float = 0.5               # model_guidance: w ∈ [0, 1); its fixed point is CFG at s = 1/(1 − w) (w = ½: s = 2)
    init_from: str | None = None     # fine-tune: a saved conditional GenDivPipeline; its β path starts at zero
    eval_guidance_scale: float = 1.0  # the scale the evaluation samples (and metrics) use

    def __post_init__(self):
        check(0 <= self.beta_min < 1, f"guidance_free.beta_min must be in [0, 1) (β = 1/s ∈ (0, 1]), got {self.beta_min}")
        check(0 <= self.scale < 1, f"guidance_free.scale must be in [0, 1) (model guidance's fixed point is CFG at "
              f"s = 1/(1 − w); w ≥ 1 has none), got {self.scale}")
        check(self.eval_guidance_scale >= 1, f"guidance_free.eval_guidance_scale must be ≥ 1, got {self.eval_guidance_scale}")


@dataclass
class TrainConfig:
    objective: str = "edm"           # edm | reflected | gft | model_guidance | cfg_aware
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reflected: ReflectedConfig = field(default_factory=ReflectedConfig)
    guidance_free: GuidanceFreeConfig = field(default_factory=GuidanceFreeConfig)
    cfg_aware: CFGAwareConfig = field(default_factory=CFGAwareConfig)
    teacher_loss: TeacherLossConfig = field(default_factory=TeacherLossConfig)
    mirror_flow: MirrorFlowConfig = field(default_factory=MirrorFlowConfig)

    def __post_init__(self):
        check(self.objective in OBJECTIVES, f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")


def draw_condition(labels, drop_prob: float, generator) -> Condition | None:
    if labels is None:
        return None
    drop = torch.rand(labels.shape[0], generator=generator) < drop_prob
    return Condition(class_labels=labels, drop=drop)


def sample_with(denoiser, source, n: int, cfg: EvalConfig, seed: int, device):
    """Samples from a denoiser with the evaluation sampler; labels drawn like the data's (conditional sources)."""
    g = torch.Generator().manual_seed(seed)
    labels = draw_labels(source, n, g)
    cond = None if labels is None else Condition(class_labels=labels.to(device))
    x = sample(denoiser, (n, *source.shape), num_steps=cfg.num_steps, sampler=cfg.sampler, cond=cond, generator=g, device=device)
    return x, labels


class EDMObjective:
    """EDM denoising (docs/methods.md §0) with label dropout to the null class; Heun sampling; GenDivPipeline."""

    def __init__(self, cfg: TrainConfig, source):
        self.cfg = cfg

    def loss(self, model, x0, cond, generator, ema_model=None):
        return denoising_loss(model, x0, cond, sigma_sampler=self.cfg.optim.sigma_sampler, generator=generator)

    def prepare_model(self, model):
        return model

    def sample(self, denoiser, source, n: int, seed: int, device):
        x, labels = sample_with(denoiser, source, n, self.cfg.eval, seed, device)
        return x, labels, f"{2 * self.cfg.eval.num_steps - 1} NFE"

    def to_display(self, x):
        return x

    def denoiser_kwargs(self) -> dict:
        return {}

    def pipeline(self, denoiser):
        return GenDivPipeline.from_denoiser(denoiser)


class ReflectedObjective:
    """Reflected score matching on the declared box; the reflected SDE/ODE sampler; ReflectedDiffusionPipeline."""

    def __init__(self, cfg: TrainConfig, source):
        self.cfg = cfg.reflected
        self.box = Box(*self.cfg.box)
        data = source.images if hasattr(source, "images") else source.sample_batch(4096, torch.Generator().manual_seed(0))[0]
        self.box.check_inside(data, f"data ({cfg.data.source})")

    def denoiser_kwargs(self) -> dict:
        """The network sees the box as [−1, 1] (measured: on [0, 1] an MLP learns the box checkerboard far slower)."""
        return {"data_shift": 0.5 * (self.box.low + self.box.high), "data_scale": 0.5 * self.box.width}

    def prepare_model(self, model):
        return model

    def loss(self, model, x0, cond, generator, ema_model=None):
        c = self.cfg
        sigma = sample_reflected_sigma(x0.shape[0], c.sigma_min, c.sigma_max, c.sigma_sampler, scale=0.5 * self.box.width,
                                       generator=generator, device=x0.device)
        return reflected_denoising_loss(model, x0, cond, self.box, c.sigma_min, c.sigma_max, c.weighting, sigma=sigma,
                                        generator=generator)

    def pipeline(self, denoiser):
        c = self.cfg
        scheduler = REFLECTED_SAMPLERS[c.sampler](sigma_min=c.sigma_min, sigma_max=c.sigma_max, box_low=self.box.low,
                                                  box_high=self.box.high)
        pipe = ReflectedDiffusionPipeline(denoiser=denoiser, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(self, denoiser, source, n: int, seed: int, device):
        g = torch.Generator().manual_seed(seed)
        labels = draw_labels(source, n, g)
        x = self.pipeline(denoiser)(batch_size=n, class_labels=labels, num_inference_steps=self.cfg.num_steps,
                                    generator=g, output_type="pt").images
        if x.ndim == 4:  # the pipeline returns images in [0, 1]; back to box coordinates
            x = self.box.from_unit(x)
        return x.to(device), labels, f"reflected {self.cfg.sampler}, {self.cfg.num_steps} steps"

    def to_display(self, x):
        return 2 * self.box.to_unit(x) - 1

    def held_out_metrics(self, denoiser, source) -> dict:
        """The model's NLL (nats) and bits/dim of ``likelihood_samples`` data points at σ_min through the reflected
        probability-flow ODE; on a toy source also the true −log p_{σ_min} of the same points."""
        c = self.cfg
        if c.likelihood_samples == 0:
            return {}
        x, labels = source.sample_batch(c.likelihood_samples, torch.Generator().manual_seed(3))
        cond = None if labels is None else Condition(class_labels=labels)
        device = next(denoiser.parameters()).device
        log_p, folded = reflected_log_likelihood(
            denoiser, x.to(device), None if cond is None else cond.to(device), self.box, c.sigma_min, c.sigma_max,
            c.likelihood_steps, c.likelihood_divergence, generator=torch.Generator().manual_seed(4),
            mollifier_sharpness=c.likelihood_mollifier, return_folded=True)
        log_p = log_p.cpu()
        # a folded trajectory means the flow map is not one-to-one: the NLL is then not that of a normalised density
        out = {"nll": float(-log_p.mean()), "bpd": float(bits_per_dim(log_p, x[0].numel()).mean()),
               "likelihood_folded": float(folded.double().mean())}
        if isinstance(source, ToySource):
            out["nll_true"] = float(-source.dist.log_prob(x, c.sigma_min, cond).mean())
        return out


class GuidanceFreeObjective(EDMObjective):
    """GFT: the EDM loss on D_c = β·D_s + (1 − β)·sg[D_u]; the model takes w = 1/β − 1 as its ``guidance`` input and
    samples guided with one pass per step (GenDivPipeline(guidance_scale=s))."""

    def __init__(self, cfg: TrainConfig, source):
        super().__init__(cfg, source)
        self.options = cfg.guidance_free
        if source.num_classes is None:
            raise ConfigError(f"objective {cfg.objective} needs class labels, but data {cfg.data.source} has none")

    def prepare_model(self, model):
        if self.options.init_from is None:
            return with_scalar_condition(model, GUIDANCE_SCALAR, self.cfg.model.time_cond_proj_dim)
        check(Path(self.options.init_from, "model_index.json").is_file(),
              f"guidance_free.init_from={self.options.init_from} is not a saved pipeline folder (no model_index.json)")
        base = GenDivPipeline.from_pretrained(self.options.init_from).denoiser
        if base.config.get("num_classes") != model.config.get("num_classes"):
            raise ConfigError(f"guidance_free.init_from={self.options.init_from} has num_classes="
                             f"{base.config.get('num_classes')}, the data {model.config.get('num_classes')}")
        return with_scalar_condition(base, GUIDANCE_SCALAR, self.cfg.model.time_cond_proj_dim)  # zero-initialised β path: starts equal to the base

    def loss(self, model, x0, cond, generator, ema_model=None):
        return gft_loss(model, x0, cond, self.options.beta_min, generator, sigma_sampler=self.cfg.optim.sigma_sampler)

    def sample(self, denoiser, source, n: int, seed: int, device):
        s = self.options.eval_guidance_scale
        guided = lambda x, sigma, c: denoiser(x, sigma, with_guidance_scale(c, s, x.shape[0], x.device))  # noqa: E731
        x, labels, how = super().sample(guided, source, n, seed, device)
        return x, labels, f"{how}, 1 pass/step at s = {s:g}"


class ModelGuidanceObjective(EDMObjective):
    """Model guidance: the EDM loss with the target shifted by the EMA model's guidance direction (scale w); it converges
    to CFG at s = 1/(1 − w)."""

    def __init__(self, cfg: TrainConfig, source):
        super().__init__(cfg, source)
        self.options = cfg.guidance_free
        if source.num_classes is None:
            raise ConfigError(f"objective {cfg.objective} needs class labels, but data {cfg.data.source} has none")

    def loss(self, model, x0, cond, generator, ema_model=None):
        return model_guidance_loss(model, ema_model, x0, cond, self.options.scale, generator,
                                   sigma_sampler=self.cfg.optim.sigma_sampler)


class CFGAwareObjective(EDMObjective):
    """CFG-aware training: the EDM loss on the CFG combination at the scale w it will be sampled with
    (objectives/cfg_aware.py); evaluation samples with CFG at w."""

    def __init__(self, cfg: TrainConfig, source):
        super().__init__(cfg, source)
        self.options = cfg.cfg_aware
        if source.num_classes is None:
            raise ConfigError(f"objective {cfg.objective} needs class labels, but data {cfg.data.source} has none")

    def loss(self, model, x0, cond, generator, ema_model=None):
        return cfg_aware_loss(model, x0, cond, self.options.scale, self.options.weight, generator,
                              sigma_sampler=self.cfg.optim.sigma_sampler)

    def sample(self, denoiser, source, n: int, seed: int, device):
        from ..guidance import ClassifierFreeGuidedDenoiser

        guided = ClassifierFreeGuidedDenoiser(denoiser, self.options.scale)
        x, labels, how = super().sample(guided, source, n, seed, device)
        return x, labels, f"{how} × 2 passes, CFG at s = {self.options.scale:g}"


class PseudoHuberObjective(EDMObjective):
    """The EDM loss through a pseudo-Huber with the scheduled c(σ) (objectives/denoising_variants.py): corrupted
    training samples pull less."""

    def loss(self, model, x0, cond, generator, ema_model=None):
        return pseudo_huber_denoising_loss(model, x0, cond, self.cfg.teacher_loss.huber_c0, generator=generator,
                                           sigma_sampler=self.cfg.optim.sigma_sampler)


class InputPerturbationObjective(EDMObjective):
    """DDPM-IP: the EDM loss with the network input perturbed by γσξ (objectives/denoising_variants.py)."""

    def loss(self, model, x0, cond, generator, ema_model=None):
        return input_perturbation_denoising_loss(model, x0, cond, self.cfg.teacher_loss.input_perturbation,
                                                 generator=generator, sigma_sampler=self.cfg.optim.sigma_sampler)


class MirrorFlowObjective:
    """Mirror flow matching on a convex domain (objectives/mirror_flow.py): a VelocityMLP in the dual space, the
    Student-t prior, MirrorFlowMatchingPipeline; evaluated by moments against the target's closed form."""

    def __init__(self, cfg: TrainConfig, source):
        self.cfg, self.options = cfg, cfg.mirror_flow
        if not isinstance(source, ToySource):
            raise ConfigError(f"objective mirror_flow needs point data (toy:<name>), got data {cfg.data.source}")
        check_in_domain(source.sample_batch(4096, torch.Generator().manual_seed(0))[0], self.options.domain,
                        f"data ({cfg.data.source})")
        self.dual_dim = dual_dim(self.options.domain, source.shape[0])

    def denoiser_kwargs(self) -> dict:
        return {}

    def prepare_model(self, model):
        """The built denoiser is replaced by a velocity network of the same width and depth on the dual space."""
        return VelocityMLP(dim=self.dual_dim, hidden=self.cfg.model.hidden, depth=self.cfg.model.depth)

    def loss(self, model, x0, cond, generator, ema_model=None):
        o = self.options
        return mirror_flow_loss(model, x0, o.domain, o.prior_dof, o.prior_scale, generator)

    def pipeline(self, velocity):
        o = self.options
        pipe = MirrorFlowMatchingPipeline(velocity, FlowMatchEulerDiscreteScheduler(), o.domain, o.prior_dof,
                                          o.prior_scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(self, velocity, source, n: int, seed: int, device):
        x = self.pipeline(velocity)(batch_size=n, num_inference_steps=self.options.num_steps,
                                    generator=torch.Generator().manual_seed(seed)).images
        return x.to(device), None, f"mirror flow, {self.options.num_steps} Euler steps"

    def to_display(self, x):
        return x

    def toy_metrics(self, dist, x, ref, cond=None) -> dict:
        """Moment errors where the target has closed-form moments (Dirichlet, ball), the exact mixture metrics else."""
        inside = float(inside_mask(x, self.options.domain).double().mean())
        exact = moment_errors(dist, x) if hasattr(dist, "covariance") else exact_metrics(dist, x.clamp(0, 1), ref)
        return {"sliced_w2": sliced_wasserstein2(x, ref), **exact, "inside_fraction": inside}


OBJECTIVES = {"edm": EDMObjective, "reflected": ReflectedObjective, "gft": GuidanceFreeObjective,
              "model_guidance": ModelGuidanceObjective, "cfg_aware": CFGAwareObjective,
              "pseudo_huber": PseudoHuberObjective, "input_perturbation": InputPerturbationObjective,
              "mirror_flow": MirrorFlowObjective}


class DiffusionTrainer(TrainingLoop):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg.run, to_dict(cfg), image_data=is_image_source(cfg.data.source))
        self.cfg = cfg
        self.source = build_data(cfg.data)
        self.objective = OBJECTIVES[cfg.objective](cfg, self.source)
        model = self.objective.prepare_model(build_model(cfg.model, self.source, **self.objective.denoiser_kwargs()))
        model = self.speed_up(model)
        opt = self.optimizer(model.parameters(), cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)
        self.model, self.opt = self.accelerator.prepare(model, opt)
        self.ema_model = self.add_ema("denoiser", self.model, EmaProfile(cfg.optim.ema_decay, cfg.optim.ema_std))

    def train_step(self) -> dict:
        dev = self.accelerator.device
        x0, labels = self.source.sample_batch(self.run.batch_size, self.gen)
        cond = draw_condition(labels, self.cfg.optim.cond_drop_prob, self.gen)
        with self.accelerator.autocast():
            loss = self.objective.loss(self.model, x0.to(dev), None if cond is None else cond.to(dev), self.gen,
                                       ema_model=self.ema_model)
        self.check_finite("denoising loss", loss)
        grad_norm = self.clip_and_step(self.model, self.opt, loss, "denoiser")
        self.update_ema("denoiser")
        return {"loss": self.mean_over_processes(loss), "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self, final: bool) -> dict:
        if not self.is_main:
            return {}
        n = self.cfg.eval.num_samples if isinstance(self.source, ToySource) else 64
        x, labels, how = self.objective.sample(self.ema_model, self.source, n, seed=self.run.seed + 1,
                                               device=self.accelerator.device)
        tag = "final" if final else f"step{self.step:07d}"
        if isinstance(self.source, ToySource):
            dist = self.source.dist
            ref = dist.sample(n, torch.Generator().manual_seed(self.run.seed + 2), class_labels=labels)
            cond = None if labels is None else Condition(class_labels=labels)
            metrics = getattr(self.objective, "toy_metrics", exact_metrics)(dist, x.cpu(), ref, cond=cond)
            metrics.update(getattr(self.objective, "held_out_metrics", lambda *a: {})(self.ema_model, self.source))
            scatter_plot(self.out / f"samples_{tag}.png", {"data (exact)": ref, f"model, {how}": x},
                         title=f"{dist.name} — step {self.step}", reference=ref)
            return metrics
        image_grid(self.out / f"samples_{tag}.png", self.objective.to_display(x), title=f"samples ({how}), step {self.step}")
        return getattr(self.objective, "held_out_metrics", lambda *a: {})(self.ema_model, self.source)

    def export(self):
        if self.is_main:
            self.objective.pipeline(self.ema_model).save_pretrained(str(self.out / "pipeline"))


def train(cfg: TrainConfig) -> dict:
    return DiffusionTrainer(cfg).fit()
