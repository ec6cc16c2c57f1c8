"""One-step distillation under accelerate: generator, fake score and discriminator with their own optimisers,
a fake:generator update ratio (TTUR), EMA of the generator, checkpoints and exact resume.

The method (gendiv.objectives.distill) decides the weighting; this trainer owns everything else.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..condition import Condition
from ..guidance import ClassifierFreeGuidance
from ..models import DiscriminatorHead, OneStepGenerator, denoiser_from_pipeline_folder
from ..models.latent_text import is_text_pipeline_folder, latent_text_teacher_from_folder
from ..models.teachers import load_teacher
from ..objectives.distill import DistillBatch, MethodSetup, NetworkFactory, method_class
from ..pipelines import GenDivPipeline, OneStepPipeline, OneStepTextToImagePipeline
from ..plotting import image_grid, scatter_plot
from ..sampling import sample
from ..space import SIGMA_SAMPLERS, sample_sigma
from ..toy import AnalyticDenoiser, exact_metrics, get_distribution
from ..models.denoiser import sample_shape, with_scalar_condition
from .builders import DataConfig, ModelConfig, build_data, build_model
from .config import ConfigError, _build, check, check_optimizer, to_dict
from .performance import apply_memory_format, is_image_source, teacher_is_image_model
from .data import TeacherSpaceSource, ToySource, draw_labels
from .loop import RunConfig, TrainingLoop


@dataclass
class TeacherConfig:
    source: str = "analytic:ring8_imbalanced"  # analytic:<toy> | pipeline:<folder> | <folder> | none (SMT); folders: gendiv or diffusers pipelines
    guidance_scale: float = 1.0                # CFG on the teacher's calls (conditional teachers; text: the "" prompt is the null)
    prompts: str | list = ""                   # text-conditioned teachers: a .txt file (one prompt per line) or a list

    def __post_init__(self):
        check(math.isfinite(self.guidance_scale), f"teacher.guidance_scale must be finite, got {self.guidance_scale}")
        kind = self.source.partition(":")[0]
        check(kind in ("analytic", "pipeline") or self.source == "none" or Path(self.source).is_dir(),
              f"teacher.source: unknown teacher source {self.source!r} (not a folder either); use analytic:<toy name>, pipeline:<folder> "
              "or none (methods that train from data alone)")
        if isinstance(self.prompts, str) and self.prompts:
            check(Path(self.prompts).is_file(), f"teacher.prompts: {self.prompts} is not a file (one prompt per line)")
        check(isinstance(self.prompts, (str, list)) and all(isinstance(p, str) for p in (self.prompts if isinstance(self.prompts, list) else [])),
              f"teacher.prompts must be a file name or a list of strings, got {self.prompts!r}")
        folder = self.source.partition(":")[2] if kind == "pipeline" else self.source
        if is_text_pipeline_folder(folder):
            check(bool(self.prompt_list()), f"teacher.source: {folder} is a text-conditioned pipeline; set teacher.prompts "
                  "(a .txt file with one prompt per line, or a list) to distil it")

    def prompt_list(self) -> list[str]:
        if isinstance(self.prompts, list):
            return [p for p in self.prompts if p.strip()]
        if not self.prompts:
            return []
        return [line.strip() for line in Path(self.prompts).read_text().splitlines() if line.strip()]


@dataclass
class SigmaConfig:
    kind: str = "karras_index"                 # auto (the method's default) | karras_index | lognormal | log_uniform
    min_index: int = 20                        # karras_index: DMD2 uses [20, 980] of a 1000-point grid
    max_index: int = 980
    num_points: int = 1000
    p_mean: float = -1.2                       # lognormal
    p_std: float = 1.2

    def __post_init__(self):
        check(self.kind in ("auto", *SIGMA_SAMPLERS), f"sigma kind must be auto or one of {sorted(SIGMA_SAMPLERS)}, got {self.kind!r}")
        check(self.num_points >= 2 and 0 <= self.min_index <= self.max_index < self.num_points,
              f"sigma: need 0 ≤ min_index ≤ max_index < num_points, got {self.min_index}, {self.max_index}, {self.num_points}")
        check(self.p_std > 0, f"sigma: p_std must be > 0, got {self.p_std}")

    def kwargs(self) -> dict:
        if self.kind == "karras_index":
            return dict(num_points=self.num_points, min_index=self.min_index, max_index=self.max_index)
        if self.kind == "lognormal":
            return dict(p_mean=self.p_mean, p_std=self.p_std)
        return {}


DEFAULT_METHOD = {"name": "f_distill", "fake_updates_per_generator_update": 2}


def method_from_config(section: dict):
    """The ``method:`` section → (method class, its validated options). Unknown keys and bad values are ConfigErrors."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("method: needs a name (e.g. method.name=f_distill)")
    try:
        cls = method_class(section["name"])
    except ValueError as e:
        raise ConfigError(f"method.name: {e}") from None
    options = _build(cls.Options, {k: v for k, v in section.items() if k != "name"}, "method")
    try:
        options.validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return cls, options


@dataclass
class StudentConfig:
    sigma_init: float | None = None            # G(z) = D_θ(σ_init z, σ_init); None: the method's (80 DMD, 2.5 SiD)
    init_from_teacher: bool = True             # network teachers: generator and fake start as teacher copies
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture when not copied (analytic teachers)
    discriminator_hidden: int = 128

    def __post_init__(self):
        check(self.sigma_init is None or self.sigma_init > 0, f"student.sigma_init must be > 0, got {self.sigma_init}")
        check(self.discriminator_hidden >= 1, f"student.discriminator_hidden must be ≥ 1, got {self.discriminator_hidden}")


@dataclass
class DistillOptimConfig:
    lr_generator: float = 6e-4
    lr_fake: float = 3e-3                      # the fake score must track the generator closely (toy-scale rates)
    lr_discriminator: float = 3e-3
    betas: list = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    fake_warmup_steps: int = 200               # fake-score (and discriminator) steps before the first generator step
    # on steps that update the generator, train the auxiliary networks on that step's (detached) generator samples
    # instead of a fresh generator pass, as DMD2 does; auto: for image models (points cost nothing to regenerate)
    reuse_generator_samples: str | bool = "auto"

    def __post_init__(self):
        check(self.reuse_generator_samples in ("auto", True, False),
              f"optim.reuse_generator_samples must be auto, true or false, got {self.reuse_generator_samples!r}")
        check_optimizer("optim", [("lr_generator", self.lr_generator), ("lr_fake", self.lr_fake),
                                  ("lr_discriminator", self.lr_discriminator)], self.betas, self.weight_decay, self.ema_decay)
        check(self.fake_warmup_steps >= 0, f"optim.fake_warmup_steps must be ≥ 0, got {self.fake_warmup_steps}")


@dataclass
class DistillEvalConfig:
    num_samples: int = 2000
    teacher_steps: int = 18                    # the teacher's Heun sampler: 2·18 − 1 = 35 NFE

    def __post_init__(self):
        check(self.num_samples >= 1, f"eval.num_samples must be ≥ 1, got {self.num_samples}")
        check(self.teacher_steps >= 1, f"eval.teacher_steps must be ≥ 1, got {self.teacher_steps}")


@dataclass
class DistillConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/distill", steps=6000, batch_size=256,
                                                             checkpoint_every=1000, sample_every=0))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(source=""))  # real data for the discriminator
    student: StudentConfig = field(default_factory=StudentConfig)
    method: dict = field(default_factory=lambda: dict(DEFAULT_METHOD))  # name + that method's options
    # auto: the method's default (EDM's lognormal σ for the DMD family, SiD's Karras range for SiD-type methods);
    # image configs use DMD2's Karras-index range (karras_index, [20, 980])
    sigma_generator: SigmaConfig = field(default_factory=lambda: SigmaConfig(kind="auto"))
    sigma_fake: SigmaConfig = field(default_factory=lambda: SigmaConfig(kind="lognormal", min_index=0, max_index=999))
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    eval: DistillEvalConfig = field(default_factory=DistillEvalConfig)

    def __post_init__(self):
        method_from_config(self.method)  # validated when the config is loaded, before any work


class _Factory(NetworkFactory):
    """Auxiliary networks for a method: score networks start as trainable teacher copies (network teachers) or
    as fresh ``student.model`` networks (analytic teachers); heads are sized on a network's bottleneck."""

    def __init__(self, trainer: "DistillTrainer", teacher):
        self.trainer, self.teacher = trainer, teacher

    def fresh(self) -> bool:
        return self.teacher is None or isinstance(self.teacher, AnalyticDenoiser) or not self.trainer.cfg.student.init_from_teacher

    def score_network(self, scalar=None):
        t = self.trainer
        if self.fresh():
            model_cfg = t.cfg.student.model
            if scalar is not None:
                model_cfg = ModelConfig(**{**to_dict(model_cfg), "scalar_names": list(model_cfg.scalar_names) + [scalar]})
            return build_model(model_cfg, t.source)
        net = copy.deepcopy(self.teacher)
        if scalar is not None:
            net = with_scalar_condition(net, scalar)  # zero-initialised: equals the teacher for every value
        return net.requires_grad_(True).train()

    def discriminator_head(self, on):
        x_ex, _ = self.trainer.source.sample_batch(1, torch.Generator().manual_seed(0))
        return DiscriminatorHead.for_denoiser(on, x_ex, hidden=self.trainer.cfg.student.discriminator_hidden)


class DistillTrainer(TrainingLoop):
    """Generator + whatever auxiliary networks the method declares, each with its own optimiser
    (``optim.lr_<network name>``); the method supplies both losses and its update ratio."""

    def __init__(self, cfg: DistillConfig):
        method_cls, options = method_from_config(cfg.method)
        super().__init__(cfg.run, to_dict(cfg), image_data=is_image_source(cfg.data.source)
                         or teacher_is_image_model(cfg.teacher.source))
        self.cfg = cfg
        acc = self.accelerator
        teacher, default_data, self.text_teacher = load_teacher(cfg.teacher.source)
        self.prompt_embeds = None
        if self.text_teacher is not None:
            if cfg.data.source or method_cls.needs_real_data():
                raise ConfigError(f"teacher.source: {cfg.teacher.source} is a latent text-conditioned teacher; it distils "
                                  f"data-free (dmd, diff_instruct, sid, or GAN-free f_distill / uni_instruct): method "
                                  f"{method_cls.name} with these options needs real data, which would have to be latents "
                                  "with captions; unset data.source and the GAN weights")
            self.prompts = cfg.teacher.prompt_list()
            self.prompt_embeds = self.text_teacher.encode(self.prompts)  # encoded once: [P, L, D]
            self.text_teacher.vae.to(acc.device)  # decodes the evaluation grids
        if teacher is None and method_cls.needs_teacher:
            raise ConfigError(f"method {method_cls.name} distils a teacher: set teacher.source (analytic:<toy> or "
                              "pipeline:<folder>); teacher.source=none is for methods that train from data alone (smt)")
        self.teacher = None if teacher is None else teacher.to(acc.device).eval().requires_grad_(False)
        data_source = cfg.data.source or default_data
        if data_source:
            self.source = build_data(DataConfig(**{**to_dict(cfg.data), "source": data_source}))
        elif method_cls.needs_real_data():
            raise ConfigError(f"set data.source: method {method_cls.name} needs real data (for its discriminator, or as "
                              "its only signal without a teacher); DMD, Diff-Instruct and SiD distil data-free")
        else:  # data-free: the teacher's space is the only thing the run needs to know
            self.source = TeacherSpaceSource(sample_shape(teacher, 1)[1:], teacher.config.get("num_classes"),
                                             is_image=len(sample_shape(teacher, 1)) == 4, method=method_cls.name)

        self.method = method_cls(options)
        self.fake_per_gen = self.method.fake_updates
        sigma_gen = cfg.sigma_generator
        self.sigma_configs = {"generator": SigmaConfig(**self.method.default_sigma_generator) if sigma_gen.kind == "auto"
                              else sigma_gen, "fake": cfg.sigma_fake}
        sigma_init = cfg.student.sigma_init if cfg.student.sigma_init is not None else self.method.default_sigma_init

        factory = _Factory(self, teacher)
        if factory.fresh():
            generator = OneStepGenerator.from_denoiser(build_model(cfg.student.model, self.source), sigma_init)
        else:
            generator = OneStepGenerator.from_denoiser(teacher, sigma_init)
        self._check_compatible(generator, teacher)
        aux = self.method.build_auxiliaries(factory)
        if teacher is not None and cfg.teacher.guidance_scale != 1.0 and self.source.num_classes is None \
                and self.text_teacher is None:
            raise ConfigError(f"teacher.guidance_scale={cfg.teacher.guidance_scale} needs a class-conditional teacher and "
                              "data (CFG guides against the null class); this teacher is unconditional")
        self.guided_teacher = None if teacher is None else ClassifierFreeGuidance(self.teacher, cfg.teacher.guidance_scale)

        o = cfg.optim
        mk = lambda params, lr: self.optimizer(params, lr, o.betas, o.weight_decay)  # noqa: E731
        generator = self.speed_up(generator)
        aux = {name: self.speed_up(module) for name, module in aux.items()}
        if self.teacher is not None:
            apply_memory_format(self.teacher, cfg.run.channels_last)
        names, modules, optimizers = ["generator"], [generator], [mk(generator.parameters(), o.lr_generator)]
        for name, module in aux.items():
            params = [p for p in module.parameters() if p.requires_grad]
            names.append(name)
            modules.append(module)
            if params:
                if not hasattr(o, f"lr_{name}"):
                    raise ConfigError(f"method {self.method.name} trains a network {name!r} but optim has no lr_{name}")
                optimizers.append(mk(params, getattr(o, f"lr_{name}")))
            else:
                optimizers.append(None)  # parameter-free (e.g. SiDA's encoder discriminator)
        prepared = acc.prepare(*modules, *[opt for opt in optimizers if opt is not None])
        prepared_modules, prepared_opts = list(prepared[:len(modules)]), iter(prepared[len(modules):])
        self.nets = dict(zip(names, prepared_modules))
        self.optimizers = {n: (next(prepared_opts) if opt is not None else None) for n, opt in zip(names, optimizers)}
        self.generator = self.nets.pop("generator")
        self.opt_g = self.optimizers.pop("generator")
        self.ema_generator = self.add_ema("generator", self.generator, o.ema_decay)
        self.extra_state.update(self.method.state_modules())
        self.method.prepare(MethodSetup(teacher=self.guided_teacher, sample_shape=acc.unwrap_model(self.generator).sample_shape,
                                        draw_condition=self._draw_condition, seed=self.run.seed, device=acc.device,
                                        teacher_steps=cfg.eval.teacher_steps))
        self._teacher_reference = None
        reuse = cfg.optim.reuse_generator_samples
        self.reuse_samples = self.source.is_image if reuse == "auto" else bool(reuse)

    # -- set-up checks -----------------------------------------------------------------------------
    def _check_compatible(self, generator, teacher):
        shape = tuple(generator.sample_shape(2))
        if tuple(self.source.shape) != shape[1:]:
            raise ValueError(f"generator produces {shape[1:]} but the data/teacher space is {tuple(self.source.shape)}")
        x = torch.zeros(shape)
        if teacher is None:
            if generator.num_classes != self.source.num_classes:
                raise ValueError(f"condition mismatch: generator has num_classes={generator.num_classes}, the data "
                                 f"{self.source.num_classes}")
            return
        t_classes = getattr(teacher, "num_classes", None) if isinstance(teacher, AnalyticDenoiser) else teacher.config.num_classes
        if generator.num_classes != t_classes:
            raise ValueError(f"condition mismatch: generator has num_classes={generator.num_classes}, teacher {t_classes}")
        if self.source.num_classes != t_classes:
            raise ValueError(f"condition mismatch: the data has num_classes={self.source.num_classes} but the teacher "
                             f"{t_classes} (set data.use_labels=false for an unconditional teacher)")
        with torch.no_grad():
            out = teacher(x.to(self.accelerator.device), 1.0, self._cond(2))
        if tuple(out.shape) != shape:
            raise ValueError(f"teacher output {tuple(out.shape[1:])} does not match the generator's {shape[1:]}")

    def _draw_condition(self, batch: int, generator: torch.Generator) -> Condition | None:
        """``batch`` training conditions (on the CPU): prompts drawn uniformly for text teachers, else class labels."""
        if self.prompt_embeds is not None:
            idx = torch.randint(0, len(self.prompt_embeds), (batch,), generator=generator)
            return Condition(text_embeds=self.prompt_embeds[idx])
        labels = draw_labels(self.source, batch, generator)
        return None if labels is None else Condition(class_labels=labels)

    def _cond(self, batch: int, labels=None) -> Condition | None:
        """A training batch's condition on the device: the given labels (real data's) or drawn ones."""
        cond = Condition(class_labels=labels) if labels is not None else self._draw_condition(batch, self.gen)
        return None if cond is None else cond.to(self.accelerator.device)

    def _sigma(self, which: str, batch: int) -> torch.Tensor:
        cfg = self.sigma_configs[which]
        return sample_sigma(cfg.kind, batch, generator=self.gen, **cfg.kwargs()).to(self.accelerator.device)

    def _z(self, batch: int) -> torch.Tensor:
        shape = self.accelerator.unwrap_model(self.generator).sample_shape(batch)
        return torch.randn(shape, generator=self.gen).to(self.accelerator.device)

    def _real(self, batch: int):
        x_real, labels = self.source.sample_batch(batch, self.gen)
        return x_real.to(self.accelerator.device), self._cond(batch, labels)

    def _batch(self, x, cond) -> DistillBatch:
        return DistillBatch(x=x, cond=cond, teacher=self.guided_teacher, generator=self.generator, rng=self.gen,
                            draw_sigma=self._sigma, draw_real=self._real, step=self.step)

    # -- the two updates -----------------------------------------------------------------------------
    def auxiliary_step(self, samples=None) -> dict:
        """The method's auxiliary networks (fake score, discriminator, ...) on detached generator samples: ``samples``
        (x, cond) from this step's generator update, or a fresh generator pass."""
        acc, bs = self.accelerator, self.run.batch_size
        if samples is not None:
            x_fake, cond = samples
        else:
            cond = self._cond(bs)
            with torch.no_grad(), acc.autocast():
                x_fake = self.generator(self._z(bs), cond).float()
        with acc.autocast():
            loss, metrics = self.method.auxiliary_loss(self.nets, self._batch(x_fake, cond))
        self.check_finite("auxiliary (fake-score/discriminator) loss", loss)
        acc.backward(loss)
        for name, module in self.nets.items():
            opt = self.optimizers[name]
            if opt is None:
                continue
            params = [p for p in module.parameters() if p.grad is not None]
            if self.run.grad_clip and params:
                norm = acc.clip_grad_norm_(params, self.run.grad_clip)
                self.check_finite(f"gradient norm of {name}", torch.as_tensor(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
        return metrics

    def generator_step(self) -> dict:
        acc, bs = self.accelerator, self.run.batch_size
        cond = self._cond(bs)
        frozen = {name: acc.unwrap_model(m) for name, m in self.nets.items()}
        for m in frozen.values():
            m.requires_grad_(False)
        try:
            with acc.autocast():
                x = self.generator(self._z(bs), cond).float()
                loss, metrics = self.method.generator_loss(frozen, self._batch(x, cond))
            self.check_finite(f"{self.method.name} generator loss", loss)
            metrics["generator_grad_norm"] = self.clip_and_step(self.generator, self.opt_g, loss, "generator")
        finally:
            for m in frozen.values():
                m.requires_grad_(True)
        self.update_ema("generator")
        self._last_samples = (x.detach(), cond)
        return metrics

    def train_step(self) -> dict:
        s, warmup = self.step, self.cfg.optim.fake_warmup_steps  # s: completed steps before this one
        if not (s >= warmup and (s - warmup) % self.fake_per_gen == 0):
            return self.auxiliary_step()
        if self.reuse_samples:  # DMD2's order: the generator first, then the fake score on the same samples
            metrics = self.generator_step()
            metrics.update(self.auxiliary_step(samples=self._last_samples))
            return metrics
        metrics = self.auxiliary_step()
        metrics.update(self.generator_step())
        return metrics

    # -- evaluation and export -----------------------------------------------------------------------
    @torch.no_grad()
    def one_step_samples(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        gen = self.ema_generator
        cond = self._draw_condition(n, g)
        labels = None if cond is None else cond.class_labels
        z = torch.randn(gen.sample_shape(n), generator=g).to(self.accelerator.device)
        x = gen(z, None if cond is None else cond.to(self.accelerator.device)).float()
        if self.text_teacher is not None:  # latents → images for the grid
            x = self.text_teacher.decode(x)
        return x.cpu(), labels

    @torch.no_grad()
    def teacher_samples(self, n: int, seed: int, labels):
        g = torch.Generator().manual_seed(seed)
        cond = None if labels is None else Condition(class_labels=labels.to(self.accelerator.device))
        return sample(self.guided_teacher, (n, *self.source.shape), num_steps=self.cfg.eval.teacher_steps, cond=cond,
                      generator=g, device=self.accelerator.device).cpu()

    def evaluate(self, final: bool) -> dict:
        if not self.is_main:
            return {}
        n, seed = self.cfg.eval.num_samples, self.run.seed + 1
        tag = "final" if final else f"step{self.step:07d}"
        if not isinstance(self.source, ToySource):
            x, _ = self.one_step_samples(64, seed)
            image_grid(self.out / f"samples_{tag}.png", x, title=f"one-step student ({self.method.label}), step {self.step}")
            return {}
        dist = self.source.dist
        x, labels = self.one_step_samples(n, seed)
        ref = dist.sample(n, torch.Generator().manual_seed(seed + 1), class_labels=labels)
        cond = None if labels is None else Condition(class_labels=labels)  # log p(x | c), not log p(x)
        student = exact_metrics(dist, x, ref, cond=cond)
        name = self.method.label
        panels = {"truth (exact samples)": ref}
        result = {"student": student, "student_nfe": 1, "step": self.step, "method": name}
        if self.guided_teacher is not None:
            if self._teacher_reference is None:
                xt = self.teacher_samples(n, seed + 2, labels)
                self._teacher_reference = (xt, exact_metrics(dist, xt, ref, cond=cond))
            xt, teacher = self._teacher_reference
            nfe = 2 * self.cfg.eval.teacher_steps - 1
            panels[f"teacher, {nfe} NFE"] = xt
            result.update(teacher=teacher, teacher_nfe=nfe)
        panels[f"student {name}, 1 NFE"] = x
        scatter_plot(self.out / f"samples_{tag}.png", panels, title=f"{dist.name} — step {self.step}", reference=ref)
        (self.out / f"eval_{tag}.json").write_text(json.dumps(result, indent=1))
        return {f"student/{k}": v for k, v in student.items()} | {f"teacher/{k}": v for k, v in result.get("teacher", {}).items()}

    def export(self):
        if not self.is_main:
            return
        if self.text_teacher is not None:
            t = self.text_teacher
            pipe = OneStepTextToImagePipeline(student=self.ema_generator, vae=t.vae, text_encoder=t.text_encoder,
                                              tokenizer=t.tokenizer)
        else:
            pipe = OneStepPipeline(student=self.ema_generator)
        pipe.save_pretrained(str(self.out / "pipeline"))


def distill(cfg: DistillConfig) -> dict:
    return DistillTrainer(cfg).fit()
