"""Distillation under accelerate: the student, whatever networks the method declares, one optimiser per named
network, EMA of the student, checkpoints and exact resume.

The method (``gendiv.distill``) decides which updates a step runs and the loss of each; this trainer runs them and
owns everything else. It never branches on a method's name.
"""
from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..condition import Condition
from ..distill import STUDENT, MethodOptions, MethodSetup, NetworkFactory, SigmaSampler, StepDraws, method_class
from ..distill.f_distill import FDistillOptions
from ..distill.options import AutoSigma, LogNormalSigma
from ..guidance import ClassifierFreeGuidedDenoiser, guider_from_config
from ..models import DiscriminatorHead, OneStepGenerator
from ..models.latent_text import is_text_pipeline_folder
from ..models.lora import DEFAULT_TARGETS as DEFAULT_LORA_TARGETS
from ..models.lora import AdapterView, LoraOneStepGenerator, LoraSpec, SharedLora
from ..models.sharding import (Skeleton, enable_gradient_checkpointing, full_state_dict, is_sharded, reshard,
                               shard_network)
from ..models.pipeline_teachers import PipelineTeacher
from ..models.teachers import load_teacher
from ..pipelines import OneStepPipeline, OneStepTextToImagePipeline
from ..plotting import image_grid, scatter_plot
from ..sampling import sample
from ..toy import AnalyticDenoiser, exact_metrics
from ..models.denoiser import sample_shape, with_scalar_condition
from .builders import DataConfig, ModelConfig, build_data, build_model
from .config import ConfigError, check, check_optimizer, to_dict
from .performance import apply_memory_format, is_image_source, teacher_is_image_model
from .data import TeacherSpaceSource, ToySource, draw_labels
from .fsdp import ShardedCheckpoint, check_can_shard, refuse_accelerate_fsdp
from .ema import EmaProfile
from .loop import RunConfig, TrainingLoop


@dataclass
class TeacherConfig:
    source: str = "analytic:ring8_imbalanced"  # analytic:<toy> | pipeline:<folder> | <folder> | none (SMT); folders: gendiv or diffusers pipelines
    guidance_scale: float = 1.0                # CFG on the teacher's calls (conditional teachers; text: the "" prompt is the null)
    guider: dict = field(default_factory=dict)  # any guider instead: {name: interval, sigma_lo: .., guider: {name: cfg, ..}}
    prompts: str | list = ""                   # text-conditioned teachers: a .txt file (one prompt per line) or a list
    null_class: int | None = None              # class-conditional UNet2DModel folders: the class index CFG's null is

    def __post_init__(self):
        check(math.isfinite(self.guidance_scale), f"teacher.guidance_scale must be finite, got {self.guidance_scale}")
        check(not (self.guider and self.guidance_scale != 1.0), "teacher.guidance_scale and teacher.guider exclude "
              "each other: give the scale inside the guider (teacher.guider={name: cfg, guidance_scale: 2})")
        check(not self.guider or isinstance(self.guider.get("name"), str),
              f"teacher.guider needs a name (cfg, interval, icg, tsg, autoguidance, ...), got {self.guider!r}")
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
class LoraConfig:
    """Student and fake score as LoRA adapters on the one frozen teacher (peft through diffusers); rank 0: off."""

    rank: int = 0
    alpha: float | None = None                 # the update is (α/r)·B·A; None: α = r
    target_modules: list = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self):
        check(self.rank >= 0, f"student.lora.rank must be ≥ 0 (0: full-weight student), got {self.rank}")
        check(self.alpha is None or self.alpha > 0, f"student.lora.alpha must be > 0, got {self.alpha}")
        check(bool(self.target_modules), "student.lora.target_modules must name at least one module (e.g. to_q)")


@dataclass
class MemoryConfig:
    """Memory at scale (gendiv/training/fsdp.py): sharding over the processes and recomputed activations."""

    fsdp: bool = False                    # FSDP2: every trained network, the EMA and the frozen teacher sharded
    gradient_checkpointing: bool = False  # every trained UNet/transformer (LoRA: the shared base) recomputes its
                                          # blocks' activations in the backward pass; small heads are not worth it


@dataclass
class StudentConfig:
    sigma_init: float | None = None            # G(z) = D_θ(σ_init z, σ_init); None: the method's (80 DMD, 2.5 SiD)
    init_from_teacher: bool = True             # network teachers: generator and fake start as teacher copies
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture when not copied (analytic teachers)
    discriminator_hidden: int = 128
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        check(self.sigma_init is None or self.sigma_init > 0, f"student.sigma_init must be > 0, got {self.sigma_init}")
        check(self.discriminator_hidden >= 1, f"student.discriminator_hidden must be ≥ 1, got {self.discriminator_hidden}")


@dataclass
class DistillOptimConfig:
    lr_generator: float = 6e-4
    lr_fake: float = 3e-3                      # the fake score must track the generator closely (toy-scale rates)
    lr_discriminator: float = 3e-3
    lr: dict = field(default_factory=dict)     # learning rates of other networks a method declares, by name
    betas: list = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    ema_std: float | None = None               # σ_rel of EDM2's power-function EMA; replaces ema_decay

    def __post_init__(self):
        for name, value in self.lr.items():
            try:
                self.lr[name] = float(value)  # YAML reads 1e-3 (no dot) as text
            except (TypeError, ValueError):
                raise ConfigError(f"optim.lr.{name}: expected a number, got {value!r}") from None
        check_optimizer("optim", [("lr_generator", self.lr_generator), ("lr_fake", self.lr_fake),
                                  ("lr_discriminator", self.lr_discriminator),
                                  *[(f"lr.{k}", v) for k, v in self.lr.items()]],
                        self.betas, self.weight_decay, self.ema_decay, self.ema_std)

    def lr_of(self, network: str) -> float:
        if network in self.lr:
            return self.lr[network]
        if hasattr(self, f"lr_{network}"):
            return getattr(self, f"lr_{network}")
        raise ConfigError(f"the method trains a network {network!r}: set its learning rate, optim.lr.{network}=<value>")


@dataclass
class DistillEvalConfig:
    num_samples: int = 2000
    teacher_steps: int = 18                    # the teacher's Heun sampler: 2·18 − 1 = 35 NFE

    def __post_init__(self):
        check(self.num_samples >= 1, f"eval.num_samples must be ≥ 1, got {self.num_samples}")
        check(self.teacher_steps >= 1, f"eval.teacher_steps must be ≥ 1, got {self.teacher_steps}")


def _default_method() -> MethodOptions:
    return FDistillOptions(fake_updates_per_generator_update=2)


@dataclass
class DistillConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/distill", steps=6000, batch_size=256,
                                                             checkpoint_every=1000, sample_every=0))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(source=""))  # real data for the discriminator
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodOptions = field(default_factory=_default_method)  # typed by method.name (gendiv/distill/options.py)
    # auto: the method's default (EDM's lognormal σ for the DMD family, SiD's Karras range for SiD-type methods);
    # image configs use DMD2's Karras-index range (karras_index, [20, 980])
    sigma_generator: SigmaSampler = field(default_factory=AutoSigma)
    sigma_fake: SigmaSampler = field(default_factory=LogNormalSigma)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    eval: DistillEvalConfig = field(default_factory=DistillEvalConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self):
        if isinstance(self.method, dict):  # built in Python with a plain mapping
            self.method = MethodOptions.parse_section(self.method, "method")
        for key in ("sigma_generator", "sigma_fake"):
            if isinstance(getattr(self, key), dict):
                setattr(self, key, SigmaSampler.parse_section(getattr(self, key), key))
        try:  # checked at load, before any work: the run's length fits the method's schedule
            method_class(self.method.name)(self.method).check_run(self.run.steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None


class _Factory(NetworkFactory):
    """Networks for a method: score networks start as trainable teacher copies (network teachers) or as fresh
    ``student.model`` networks (analytic teachers); heads are sized on a network's bottleneck."""

    def __init__(self, trainer: "DistillTrainer", teacher, student):
        self.trainer, self.teacher, self.student = trainer, teacher, student

    def fresh(self) -> bool:
        return self.teacher is None or isinstance(self.teacher, AnalyticDenoiser) or not self.trainer.cfg.student.init_from_teacher

    def score_network(self, scalar=None):
        t = self.trainer
        if t.lora is not None:
            if scalar is not None:
                raise ConfigError(f"student.lora: a LoRA score network cannot take the extra condition {scalar!r}")
            return t.lora.score_network()
        if self.fresh():
            model_cfg = t.cfg.student.model
            if scalar is not None:
                model_cfg = ModelConfig(**{**to_dict(model_cfg), "scalar_names": list(model_cfg.scalar_names) + [scalar]})
            return build_model(model_cfg, t.source)
        net = copy.deepcopy(self.teacher)
        if scalar is not None:
            net = with_scalar_condition(net, scalar)  # zero-initialised: equals the teacher for every value
        return net.requires_grad_(True).train()

    def discriminator_head(self, on, layers="bottleneck"):
        x_ex, _ = self.trainer.source.sample_batch(1, torch.Generator().manual_seed(0))
        try:
            return DiscriminatorHead.for_denoiser(on, x_ex, hidden=self.trainer.cfg.student.discriminator_hidden,
                                                  layers=layers)
        except ValueError as e:  # a network without the levels asked for: refused before any training
            if layers == "bottleneck":
                raise
            raise ConfigError(f"method.gan.layers={layers}: {e}") from None

    def frozen_teacher(self):
        if self.teacher is None or isinstance(self.teacher, AnalyticDenoiser):
            raise ConfigError(f"method.gan.features=teacher reads a teacher network's features; teacher.source="
                              f"{self.trainer.cfg.teacher.source} has none (give a teacher folder, or features=fake)")
        return self.teacher


class DistillTrainer(TrainingLoop):
    """The student + the networks the method declares, each with its own optimiser (``optim.lr_<name>`` or
    ``optim.lr.<name>``); each step runs the updates the method schedules."""

    def __init__(self, cfg: DistillConfig):
        self.method = method = method_class(cfg.method.name)(cfg.method)
        super().__init__(cfg.run, to_dict(cfg), image_data=is_image_source(cfg.data.source)
                         or teacher_is_image_model(cfg.teacher.source))
        self.cfg = cfg
        acc = self.accelerator
        refuse_accelerate_fsdp(acc)
        if cfg.memory.fsdp:  # FSDP2 shards contiguous weights only
            check(cfg.run.channels_last is not True, "memory.fsdp shards contiguous weights only: set "
                  "run.channels_last=false (or auto)")
            self.run.channels_last = False
        teacher, default_data, self.text_teacher = load_teacher(cfg.teacher.source, null_class=cfg.teacher.null_class)
        self.lora = self._shared_lora(teacher)
        if self.lora is not None:  # one base in memory: the teacher is the base with no adapter
            teacher = self.lora.view(None)
        folder = cfg.teacher.source.removeprefix("pipeline:")
        if Path(folder).is_dir():  # a resume refuses a teacher folder retrained or replaced in place
            self.register_fingerprint("teacher.source", folder)
        self._set_up_condition_and_data(teacher, default_data)
        self.sigma_samplers = {"generator": cfg.sigma_generator if cfg.sigma_generator.kind != "auto"
                               else method.default_sigma_generator,
                               "fake": cfg.sigma_fake if cfg.sigma_fake.kind != "auto" else method.default_sigma_fake}
        sigma_init = cfg.student.sigma_init if cfg.student.sigma_init is not None else method.default_sigma_init

        factory = _Factory(self, teacher, None)
        if self.lora is not None:
            student = self.lora.student(sigma_init)
        else:
            backbone = build_model(cfg.student.model, self.source) if factory.fresh() else teacher
            student = OneStepGenerator.from_denoiser(backbone, sigma_init)
        factory.student = student
        self._check_compatible(student, teacher)
        nets = method.build_networks(factory)
        if teacher is not None and cfg.teacher.guidance_scale != 1.0 and self.source.num_classes is None \
                and self.text_teacher is None:
            raise ConfigError(f"teacher.guidance_scale={cfg.teacher.guidance_scale} needs a class-conditional teacher and "
                              "data (CFG guides against the null class); this teacher is unconditional")
        self.guided_teacher = None if teacher is None else self._guided(self.teacher)
        self.sharded, self.sharded_roots = cfg.memory.fsdp, []
        if self.sharded:  # the EMA is made whole, then sharded with the rest
            check_can_shard(self.mixed_precision)
            self._add_student_ema(student, sigma_init)
            self._shard_networks({STUDENT: student, **nets})
        else:
            self._prepare_networks({STUDENT: student, **nets})
            self._add_student_ema(self.nets[STUDENT], sigma_init)
        for name, module in method.state_modules().items():
            self.extra_state[name] = module.to(acc.device)
        method.prepare(MethodSetup(teacher=self.guided_teacher, sample_shape=student.sample_shape,
                                   draw_condition=self._draw_condition, seed=self.run.seed, device=acc.device,
                                   teacher_steps=cfg.eval.teacher_steps, is_image=self.source.is_image))
        self.updates = {u.name: u for u in method.updates()}
        self._check_schedule()
        self._teacher_reference = None

    # -- set-up ------------------------------------------------------------------------------------
    def _set_up_condition_and_data(self, teacher, default_data):
        cfg, method = self.cfg, self.method
        self.prompt_embeds = None
        if self.text_teacher is not None:
            if cfg.data.source or method.needs_real_data():
                raise ConfigError(f"teacher.source: {cfg.teacher.source} is a latent text-conditioned teacher; it distils "
                                  f"data-free (dmd, diff_instruct, sid, or GAN-free f_distill / uni_instruct): method "
                                  f"{method.name} with these options needs real data, which would have to be latents "
                                  "with captions; unset data.source and the GAN weights")
            self.prompts = cfg.teacher.prompt_list()
            self.prompt_embeds = self.text_teacher.encode(self.prompts)  # encoded once: [P, L, D]
            self.text_teacher.vae.to(self.accelerator.device)  # decodes the evaluation grids
        if teacher is None and method.needs_teacher:
            raise ConfigError(f"method {method.name} distils a teacher: set teacher.source (analytic:<toy> or "
                              "pipeline:<folder>); teacher.source=none is for methods that train from data alone")
        self.teacher = None if teacher is None else teacher.to(self.accelerator.device).eval().requires_grad_(False)
        if self.teacher is not None:
            apply_memory_format(self.teacher, cfg.run.channels_last)
        data_source = cfg.data.source or default_data
        if data_source:
            self.source = build_data(DataConfig(**{**to_dict(cfg.data), "source": data_source}))
        elif method.needs_real_data():
            raise ConfigError(f"set data.source: method {method.name} needs real data (for its discriminator, or as "
                              "its only signal without a teacher); DMD, Diff-Instruct and SiD distil data-free")
        else:  # data-free: the teacher's space is the only thing the run needs to know
            self.source = TeacherSpaceSource(sample_shape(teacher, 1)[1:], teacher.config.get("num_classes"),
                                             is_image=len(sample_shape(teacher, 1)) == 4, method=method.name)

    def _shared_lora(self, teacher) -> SharedLora | None:
        lora = self.cfg.student.lora
        if not lora.rank:
            return None
        if teacher is None or isinstance(teacher, AnalyticDenoiser) or not self.cfg.student.init_from_teacher:
            raise ConfigError("student.lora adapts a network teacher's weights: it needs a teacher folder and "
                              "student.init_from_teacher=true")
        if self._lora_pipeline_class() is None:
            raise ConfigError(f"student.lora: {self.cfg.teacher.source} is not a pipeline with diffusers' LoRA loader "
                              "(Stable Diffusion, SDXL, SD3, PixArt, ...); the adapter could not be exported for it")
        return SharedLora(teacher, LoraSpec(rank=lora.rank, alpha=lora.alpha, target_modules=list(lora.target_modules)),
                          gradient_checkpointing=self.cfg.memory.gradient_checkpointing)

    def _lora_pipeline_class(self):
        """The teacher's pipeline class when it loads LoRA weights (what ``pipe.load_lora_weights`` is called on)."""
        from diffusers import StableDiffusionPipeline

        t = self.text_teacher
        cls = type(t.pipeline) if isinstance(t, PipelineTeacher) else StableDiffusionPipeline if t is not None else None
        return cls if cls is not None and hasattr(cls, "save_lora_weights") else None

    def _guided(self, teacher):
        """The teacher as the method sees it: CFG at teacher.guidance_scale, or any guider of teacher.guider."""
        guider = self.cfg.teacher.guider
        if not guider:
            return ClassifierFreeGuidedDenoiser(teacher, self.cfg.teacher.guidance_scale)
        if self.source.num_classes is None and self.text_teacher is None and guider["name"] not in ("tsg", "autoguidance"):
            raise ConfigError(f"teacher.guider {guider['name']!r} guides against a condition; this teacher is "
                              "unconditional (tsg and autoguidance need no condition)")
        return guider_from_config(guider, teacher, "teacher.guider").to(self.accelerator.device).eval().requires_grad_(False)

    def _add_student_ema(self, trained, sigma_init: float):
        profile = EmaProfile(self.cfg.optim.ema_decay, self.cfg.optim.ema_std)
        if self.lora is not None:  # the EMA is a third adapter on the same base, not a copy of the base
            self.ema_generator = LoraOneStepGenerator(self.lora.copy_adapter("student", "ema"), sigma_init).eval()
            self.ema[STUDENT] = (self.ema_generator, trained, profile)
        else:
            self.ema_generator = self.add_ema(STUDENT, trained, profile)

    def _networks_and_optimizers(self, modules: dict) -> dict:
        """The run's speed and memory switches on each network, and one optimiser per network with trainable
        parameters (parameter-free ones, e.g. SiDA's encoder head, get none)."""
        o = self.cfg.optim
        unknown = sorted(set(o.lr) - set(modules))
        if unknown:
            raise ConfigError(f"optim.lr.{unknown[0]}: method {self.method.name} has no network {unknown[0]!r}; "
                              f"its networks: {sorted(modules)}")
        if self.cfg.memory.gradient_checkpointing and self.lora is None:  # LoRA: SharedLora checkpoints its base
            for m in modules.values():
                enable_gradient_checkpointing(m)
        modules = {name: self.speed_up(m) for name, m in modules.items()}
        if self.sharded:
            self._shard(modules)
        self.trainable = {name: [p for p in m.parameters() if p.requires_grad] for name, m in modules.items()}
        return {name: self.optimizer(params, o.lr_of(name), o.betas, o.weight_decay)
                for name, params in self.trainable.items() if params}

    def _prepare_networks(self, modules: dict):
        """Every network and optimiser through ``accelerator.prepare`` (DDP over several processes)."""
        acc = self.accelerator
        optimizers = self._networks_and_optimizers(modules)
        prepared = acc.prepare(*modules.values(), *optimizers.values())
        self.nets = dict(zip(modules, prepared[:len(modules)]))
        self.optimizers = dict(zip(optimizers, prepared[len(modules):]))
        self.unwrapped = {name: acc.unwrap_model(m) for name, m in self.nets.items()}

    def _shard_networks(self, modules: dict):
        """memory.fsdp: FSDP2 instead of DDP (gendiv/training/fsdp.py); the networks' and optimisers' shards are
        checkpointed by ``ShardedCheckpoint`` from accelerate's own save_state/load_state."""
        self.optimizers = self._networks_and_optimizers(modules)
        self.nets = self.unwrapped = dict(modules)
        ShardedCheckpoint(self.accelerator, self.nets, self.optimizers)

    def _shard(self, modules: dict):
        """Every network sharded in place: the LoRA base once with all its adapters (student, fake, EMA: the views'
        parameters become its shards), other networks, the EMA and the teacher each as their own unit."""
        if self.lora is not None:
            self.sharded_roots = [self.lora.shard().denoiser]
        else:
            self._ema_skeleton = Skeleton(self.ema_generator)
            self.sharded_roots = [shard_network(self.ema_generator)]
            if self.teacher is not None and not isinstance(self.teacher, AnalyticDenoiser):
                self.sharded_roots.append(shard_network(self.teacher))
        self.sharded_roots += [shard_network(m) for m in modules.values()
                               if not isinstance(m, (LoraOneStepGenerator, AdapterView))]

    def _check_schedule(self):
        steps = self.run.steps
        for s in sorted({0, steps - 1, min(steps - 1, 10_000)}):
            names = self.method.schedule(s)
            if not names:
                raise ConfigError(f"method {self.method.name}: its schedule runs no update at step {s}; check its options")
            unknown = [n for n in names if n not in self.updates]
            if unknown:
                raise ValueError(f"method {self.method.name} schedules update {unknown[0]!r}, which it does not declare "
                                 f"(updates: {sorted(self.updates)})")

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

    # -- the trainer's seeded draws ---------------------------------------------------------------------
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
        return self.sigma_samplers[which].draw(batch, generator=self.gen, device=self.accelerator.device)

    def _z(self, batch: int) -> torch.Tensor:
        shape = self.unwrapped[STUDENT].sample_shape(batch)
        return torch.randn(shape, generator=self.gen).to(self.accelerator.device)

    def _real(self, batch: int):
        x_real, labels = self.source.sample_batch(batch, self.gen)
        return x_real.to(self.accelerator.device), self._cond(batch, labels)

    def _draws(self) -> StepDraws:
        return StepDraws(rng=self.gen, device=self.accelerator.device, step=self.step, batch_size=self.run.batch_size,
                         teacher=self.guided_teacher, condition=self._cond, latents=self._z, sigma=self._sigma,
                         real=self._real)

    # -- one step: the updates the method schedules -------------------------------------------------------
    def train_step(self) -> dict:
        draws, metrics = self._draws(), {}
        for name in self.method.schedule(self.step):
            metrics.update(self._run_update(self.updates[name], draws))
        return metrics

    @contextmanager
    def _only_training(self, trained):
        """Networks the update does not train are frozen for its backward (only their trainable parameters are
        touched, so a network the method keeps frozen stays frozen)."""
        frozen = [p for name, params in self.trainable.items() if name not in trained for p in params]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)
            for net in self.sharded_roots:  # the next update gathers them again, with their new trainability
                reshard(net)

    def _run_update(self, update, draws: StepDraws) -> dict:
        acc = self.accelerator
        # trained networks through their (DDP) wrappers; the others unwrapped, as plain frozen functions
        nets = {name: (self.nets[name] if name in update.trains else self.unwrapped[name]) for name in self.nets}
        with self._only_training(update.trains):
            with acc.autocast():
                loss, metrics = self.method.loss(update.name, nets, draws)
            self.check_finite(f"{self.method.name} {update.name} loss", loss)
            acc.backward(loss)
            for name in update.trains:
                if name not in self.optimizers:
                    continue
                norm = self._clip_gradients(name)
                self.optimizers[name].step()
                self.optimizers[name].zero_grad(set_to_none=True)
                if name == STUDENT:
                    metrics["generator_grad_norm"] = norm
                    self.update_ema(STUDENT)
        self.method.after_update(update.name, nets, draws)
        return metrics

    def _clip_gradients(self, name: str) -> float:
        params = [p for p in self.nets[name].parameters() if p.grad is not None]
        if not params:
            return 0.0
        if self.run.grad_clip:
            norm = self.accelerator.clip_grad_norm_(params, self.run.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = norm.full_tensor() if is_sharded(norm) else norm  # one norm of the whole gradient on every process
        self.check_finite(f"gradient norm of {name}", torch.as_tensor(norm))
        return float(norm)

    # -- evaluation and export -----------------------------------------------------------------------
    @torch.no_grad()
    def one_step_samples(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        gen = self.ema_generator
        cond = self._draw_condition(n, g)
        labels = None if cond is None else cond.class_labels
        z = torch.randn(gen.sample_shape(n), generator=g).to(self.accelerator.device)
        x = self.method.sample(gen, z, None if cond is None else cond.to(self.accelerator.device)).float()
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
        if not (self.is_main or self.sharded):  # a sharded student runs on every process (its weights are spread)
            return {}
        n, seed = self.cfg.eval.num_samples, self.run.seed + 1
        tag = "final" if final else f"step{self.step:07d}"
        if not isinstance(self.source, ToySource):
            x, _ = self.one_step_samples(64, seed)
            if self.is_main:
                image_grid(self.out / f"samples_{tag}.png", x,
                           title=f"one-step student ({self.method.label}), step {self.step}")
            return {}
        x, labels = self.one_step_samples(n, seed)
        if not self.is_main:
            return {}
        dist = self.source.dist
        ref = dist.sample(n, torch.Generator().manual_seed(seed + 1), class_labels=labels)
        cond = None if labels is None else Condition(class_labels=labels)  # log p(x | c), not log p(x)
        student = exact_metrics(dist, x, ref, cond=cond)
        name = self.method.label
        panels = {"truth (exact samples)": ref}
        result = {"student": student, "student_nfe": self.method.student_nfe, "step": self.step, "method": name}
        if self.guided_teacher is not None:
            if self._teacher_reference is None:
                xt = self.teacher_samples(n, seed + 2, labels)
                self._teacher_reference = (xt, exact_metrics(dist, xt, ref, cond=cond))
            xt, teacher = self._teacher_reference
            nfe = 2 * self.cfg.eval.teacher_steps - 1
            panels[f"teacher, {nfe} NFE"] = xt
            result.update(teacher=teacher, teacher_nfe=nfe)
        panels[f"student {name}, {self.method.student_nfe} NFE"] = x
        scatter_plot(self.out / f"samples_{tag}.png", panels, title=f"{dist.name} — step {self.step}", reference=ref)
        (self.out / f"eval_{tag}.json").write_text(json.dumps(result, indent=1))
        return {f"student/{k}": v for k, v in student.items()} | {f"teacher/{k}": v for k, v in result.get("teacher", {}).items()}

    def export(self):
        if self.lora is not None:  # diffusers' LoRA format: the teacher pipeline's load_lora_weights gives the student
            self.lora.save_lora(self.out / "lora", "ema", self._lora_pipeline_class(), write=self.is_main)
            return
        student = self.whole_ema_generator()
        if not self.is_main:
            return
        t = self.text_teacher
        if isinstance(t, PipelineTeacher):  # SDXL/SD3/PixArt-shaped: the teacher's own pipeline class, one step
            t.save_student(student, self.out / "pipeline")
            return
        if t is not None:
            pipe = OneStepTextToImagePipeline(student=student, vae=t.vae, text_encoder=t.text_encoder,
                                              tokenizer=t.tokenizer)
        else:
            pipe = OneStepPipeline(student=student)
        pipe.save_pretrained(str(self.out / "pipeline"))

    def whole_ema_generator(self):
        """The EMA student as one unsharded module on the main process (memory.fsdp: gathered from every process's
        shards, a collective; None elsewhere)."""
        if not self.sharded:
            return self.ema_generator
        state = full_state_dict(self.ema_generator, keep=self.is_main)
        return self._ema_skeleton.whole(state).eval() if self.is_main else None


def distill(cfg: DistillConfig) -> dict:
    return DistillTrainer(cfg).fit()
