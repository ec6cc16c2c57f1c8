"""One-step distillation under accelerate: generator, fake score and discriminator with their own optimisers,
a fake:generator update ratio (TTUR), EMA of the generator, checkpoints and exact resume.

The method (gendiv.objectives.distill) decides the weighting; this trainer owns everything else.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..condition import Condition
from ..guidance import ClassifierFreeGuidance
from ..models import DiscriminatorHead, OneStepGenerator, discriminator_loss
from ..objectives import build_method, denoising_loss, score_difference_step, weighted_denoising_error
from ..pipelines import GenDivPipeline, OneStepPipeline
from ..plotting import image_grid, scatter_plot
from ..sampling import sample
from ..sampling import sample_heun
from ..space import append_dims, karras_sigmas, sample_sigma
from ..toy import AnalyticDenoiser, exact_metrics, get_distribution
from .builders import DataConfig, ModelConfig, build_data, build_model
from .config import to_dict
from .data import ToySource, draw_labels
from .loop import RunConfig, TrainingLoop


@dataclass
class TeacherConfig:
    source: str = "analytic:ring8_imbalanced"  # analytic:<toy name> | pipeline:<folder of a saved GenDivPipeline>
    guidance_scale: float = 1.0                # CFG on the teacher's calls (conditional teachers)


@dataclass
class SigmaConfig:
    kind: str = "karras_index"                 # karras_index | lognormal | log_uniform
    min_index: int = 20                        # karras_index: DMD2 uses [20, 980] of a 1000-point grid
    max_index: int = 980
    num_points: int = 1000
    p_mean: float = -1.2                       # lognormal
    p_std: float = 1.2

    def kwargs(self) -> dict:
        if self.kind == "karras_index":
            return dict(num_points=self.num_points, min_index=self.min_index, max_index=self.max_index)
        if self.kind == "lognormal":
            return dict(p_mean=self.p_mean, p_std=self.p_std)
        return {}


@dataclass
class MethodConfig:
    name: str = "f_distill"                    # diff_instruct | dmd | dmd2 | f_distill
    divergence: str = "jensen_shannon"         # f_distill: name, short name or alpha:<a>
    fake_updates_per_generator_update: int | None = 2     # null: the method's paper default (5 dmd2/f_distill, 1 others)
    gan_weight_gen: float | None = None        # None: the method's default (3e-3 dmd2, 1e-3 f_distill)
    gan_weight_disc: float = 1.0               # weight of the discriminator loss added to the fake-score loss
    logit_clamp: float = 10.0
    ratio_min: float = 0.1
    ratio_max: float = 20.0
    sigma_bins: int = 10
    bin_ema: float = 0.0
    regression_weight: float = 0.0             # dmd: MSE to teacher ODE outputs on fixed noise pairs
    regression_pairs: int = 256
    kernel_backend: str = "auto"               # auto | eager | compile | triton


@dataclass
class StudentConfig:
    sigma_init: float = 80.0                   # G(z) = D_θ(σ_init z, σ_init)
    init_from_teacher: bool = True             # network teachers: generator and fake start as teacher copies
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture when not copied (analytic teachers)
    discriminator_hidden: int = 128


@dataclass
class DistillOptimConfig:
    lr_generator: float = 6e-4
    lr_fake: float = 3e-3                      # the fake score must track the generator closely (toy-scale rates)
    lr_discriminator: float = 3e-3
    betas: list = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    fake_warmup_steps: int = 200               # fake-score (and discriminator) steps before the first generator step


@dataclass
class DistillEvalConfig:
    num_samples: int = 2000
    teacher_steps: int = 18                    # the teacher's Heun sampler: 2·18 − 1 = 35 NFE


@dataclass
class DistillConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/distill", steps=6000, batch_size=256,
                                                             checkpoint_every=1000, sample_every=0))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(source=""))  # real data for the discriminator
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    # toy defaults: EDM's lognormal σ; image configs use DMD2's Karras-index range (karras_index, [20, 980])
    sigma_generator: SigmaConfig = field(default_factory=lambda: SigmaConfig(kind="lognormal"))
    sigma_fake: SigmaConfig = field(default_factory=lambda: SigmaConfig(kind="lognormal", min_index=0, max_index=999))
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    eval: DistillEvalConfig = field(default_factory=DistillEvalConfig)


def load_teacher(spec: str):
    """(teacher denoiser, default real-data source string) from ``analytic:<toy>`` or ``pipeline:<dir>``."""
    kind, _, arg = spec.partition(":")
    if kind == "analytic":
        return AnalyticDenoiser(get_distribution(arg)), f"toy:{arg}"
    if kind == "pipeline":
        path = Path(arg)
        if not (path / "model_index.json").is_file():
            raise ValueError(f"teacher pipeline not found: {path} has no model_index.json")
        return GenDivPipeline.from_pretrained(str(path)).denoiser, ""
    raise ValueError(f"unknown teacher source {spec!r}; use analytic:<toy name> or pipeline:<folder>")


class DistillTrainer(TrainingLoop):
    def __init__(self, cfg: DistillConfig):
        super().__init__(cfg.run, to_dict(cfg))
        self.cfg = cfg
        acc, dev = self.accelerator, self.accelerator.device
        teacher, default_data = load_teacher(cfg.teacher.source)
        self.teacher = teacher.to(dev).eval().requires_grad_(False)
        data_source = cfg.data.source or default_data
        if not data_source:
            raise ValueError("a network teacher needs real data for the discriminator and evaluation: set data.source")
        self.source = build_data(DataConfig(**{**to_dict(cfg.data), "source": data_source}))

        m = cfg.method
        kw = dict(kernel_backend=m.kernel_backend)
        if m.gan_weight_gen is not None:
            kw["gan_weight_gen"] = m.gan_weight_gen
        if m.name == "f_distill":
            kw.update(divergence=m.divergence, logit_clamp=m.logit_clamp, ratio_min=m.ratio_min, ratio_max=m.ratio_max,
                      sigma_bins=m.sigma_bins, bin_ema=m.bin_ema)
        if m.name in ("dmd", "dmd2", "f_distill") and m.regression_weight:
            kw["regression_weight"] = m.regression_weight
        self.method = build_method(m.name, **kw)
        self.fake_per_gen = m.fake_updates_per_generator_update or self.method.default_fake_updates

        if isinstance(teacher, AnalyticDenoiser) or not cfg.student.init_from_teacher:
            backbone = build_model(cfg.student.model, self.source)
            generator = OneStepGenerator.from_denoiser(backbone, cfg.student.sigma_init)
            fake = build_model(cfg.student.model, self.source)
        else:
            generator = OneStepGenerator.from_denoiser(teacher, cfg.student.sigma_init)
            fake = copy.deepcopy(teacher).requires_grad_(True).train()
        self._check_compatible(generator, teacher)
        guided = ClassifierFreeGuidance(self.teacher, cfg.teacher.guidance_scale)
        self.guided_teacher = guided

        o = cfg.optim
        mk = lambda params, lr: torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # noqa: E731
        opt_g, opt_f = mk(generator.parameters(), o.lr_generator), mk(fake.parameters(), o.lr_fake)
        if self.method.uses_discriminator:
            x_ex, _ = self.source.sample_batch(1, torch.Generator().manual_seed(0))
            head = DiscriminatorHead.for_denoiser(fake, x_ex, hidden=cfg.student.discriminator_hidden)
            opt_d = mk(head.parameters(), o.lr_discriminator)
            self.generator, self.fake, self.head, self.opt_g, self.opt_f, self.opt_d = acc.prepare(
                generator, fake, head, opt_g, opt_f, opt_d)
        else:
            self.generator, self.fake, self.opt_g, self.opt_f = acc.prepare(generator, fake, opt_g, opt_f)
            self.head = self.opt_d = None
        self.ema_generator = self.add_ema("generator", self.generator, o.ema_decay)
        self.extra_state.update(self.method.state_modules())
        self.regression_pairs = self._make_regression_pairs() if getattr(self.method, "regression_weight", 0) else None
        self._teacher_reference = None

    # -- set-up checks -----------------------------------------------------------------------------
    def _check_compatible(self, generator, teacher):
        shape = tuple(generator.sample_shape(2))
        x, _ = self.source.sample_batch(2, torch.Generator().manual_seed(0))
        if tuple(x.shape) != shape:
            raise ValueError(f"generator produces {shape[1:]} but the data/teacher space is {tuple(x.shape[1:])}")
        t_classes = getattr(teacher, "num_classes", None) if isinstance(teacher, AnalyticDenoiser) else teacher.config.num_classes
        if generator.num_classes != t_classes:
            raise ValueError(f"condition mismatch: generator has num_classes={generator.num_classes}, teacher {t_classes}")
        if self.source.num_classes != t_classes:
            raise ValueError(f"condition mismatch: the data has num_classes={self.source.num_classes} but the teacher "
                             f"{t_classes} (set data.use_labels=false for an unconditional teacher)")
        with torch.no_grad():
            out = teacher(x.to(self.accelerator.device), 1.0, self._labels_cond(2))
        if tuple(out.shape) != shape:
            raise ValueError(f"teacher output {tuple(out.shape[1:])} does not match the generator's {shape[1:]}")

    def _labels_cond(self, batch: int, labels=None) -> Condition | None:
        if self.source.num_classes is None:
            return None
        if labels is None:
            labels = draw_labels(self.source, batch, self.gen)
        return Condition(class_labels=labels.to(self.accelerator.device))

    def _sigma(self, cfg: SigmaConfig, batch: int) -> torch.Tensor:
        return sample_sigma(cfg.kind, batch, generator=self.gen, **cfg.kwargs()).to(self.accelerator.device)

    def _z(self, batch: int) -> torch.Tensor:
        shape = self.accelerator.unwrap_model(self.generator).sample_shape(batch)
        return torch.randn(shape, generator=self.gen).to(self.accelerator.device)

    @torch.no_grad()
    def _make_regression_pairs(self):
        """DMD's regression targets: the teacher's deterministic ODE output for fixed noise (MSE instead of LPIPS)."""
        n = self.cfg.method.regression_pairs
        g = torch.Generator().manual_seed(self.run.seed + 123)
        cond = None if self.source.num_classes is None else Condition(class_labels=torch.randint(0, self.source.num_classes, (n,), generator=g))
        z = torch.randn(self.accelerator.unwrap_model(self.generator).sample_shape(n), generator=g)
        sigmas = karras_sigmas(self.cfg.eval.teacher_steps, device=self.accelerator.device)
        x = sample_heun(self.guided_teacher, z.to(self.accelerator.device) * sigmas[0], sigmas, cond=cond)
        return z, x, cond

    # -- the two updates -----------------------------------------------------------------------------
    def fake_step(self) -> dict:
        """Fake score: EDM denoising on detached generator samples; discriminator: logistic loss, same forward."""
        acc, dev, bs = self.accelerator, self.accelerator.device, self.run.batch_size
        cond = self._labels_cond(bs)
        with torch.no_grad(), acc.autocast():
            x_fake = self.generator(self._z(bs), cond).float()
        sigma = self._sigma(self.cfg.sigma_fake, bs)
        noise = torch.randn(x_fake.shape, generator=self.gen).to(dev)
        metrics = {}
        with acc.autocast():
            if self.head is None:
                loss = denoising_loss(self.fake, x_fake, cond, sigma=sigma, noise=noise)
                metrics["fake_loss"] = float(loss.detach())
            else:
                # one fake-network pass over [generated; real] so DDP sees a single forward per backward
                x_real, real_labels = self.source.sample_batch(bs, self.gen)
                real_cond = self._labels_cond(bs, real_labels)
                sigma_real = self._sigma(self.cfg.sigma_generator, bs)
                sigma_gan = self._sigma(self.cfg.sigma_generator, bs)
                noise_gan = torch.randn(x_fake.shape, generator=self.gen).to(dev)
                x_in = torch.cat([x_fake + append_dims(sigma, x_fake.ndim) * noise,
                                  x_fake + append_dims(sigma_gan, x_fake.ndim) * noise_gan,
                                  x_real.to(dev) + append_dims(sigma_real, x_fake.ndim) * torch.randn(x_fake.shape, generator=self.gen).to(dev)])
                all_cond = None if cond is None else Condition.cat([cond, cond, real_cond])
                denoised, feats = self.fake(x_in, torch.cat([sigma, sigma_gan, sigma_real]), all_cond, return_features=True)
                dsm = weighted_denoising_error(denoised[:bs], x_fake, sigma).mean()
                logits = self.head(feats[bs:])  # [generated at σ_gan; real at σ_real]
                d_loss = discriminator_loss(logits[bs:], logits[:bs])
                loss = dsm + self.cfg.method.gan_weight_disc * d_loss
                metrics.update(fake_loss=float(dsm.detach()), disc_loss=float(d_loss.detach()),
                               disc_acc=float(((logits[bs:] > 0).float().mean() + (logits[:bs] < 0).float().mean()).detach() / 2))
        self.check_finite("fake-score/discriminator loss", loss)
        self.accelerator.backward(loss)
        for module, opt, name in ((self.fake, self.opt_f, "fake score"), (self.head, self.opt_d, "discriminator")):
            if module is None:
                continue
            params = [p for p in module.parameters() if p.grad is not None]
            if self.run.grad_clip:
                norm = acc.clip_grad_norm_(params, self.run.grad_clip)
                self.check_finite(f"gradient norm of {name}", torch.as_tensor(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
        return metrics

    def generator_step(self) -> dict:
        acc, bs = self.accelerator, self.run.batch_size
        cond = self._labels_cond(bs)
        fake = acc.unwrap_model(self.fake)
        head = None if self.head is None else acc.unwrap_model(self.head)
        fake.requires_grad_(False)
        if head is not None:
            head.requires_grad_(False)
        try:
            with acc.autocast():
                x = self.generator(self._z(bs), cond).float()
                sigma = self._sigma(self.cfg.sigma_generator, bs)
                gan_grad = head is not None and self.method.gan_weight_gen > 0
                ctx = score_difference_step(x, self.guided_teacher, fake, sigma, cond, discriminator=head,
                                            gan_grad=gan_grad, generator=self.gen)
                loss, metrics = self.method.generator_loss(ctx)
                if self.regression_pairs is not None:
                    z, target, pcond = self.regression_pairs
                    idx = torch.randint(0, len(z), (bs,), generator=self.gen)
                    pc = None if pcond is None else pcond.index(idx).to(acc.device)
                    reg = torch.nn.functional.mse_loss(self.generator(z[idx].to(acc.device), pc).float(), target[idx])
                    loss = loss + self.method.regression_weight * reg
                    metrics["regression_loss"] = float(reg.detach())
            self.check_finite(f"{self.method.name} generator loss", loss)
            metrics["generator_grad_norm"] = self.clip_and_step(self.generator, self.opt_g, loss, "generator")
        finally:
            fake.requires_grad_(True)
            if head is not None:
                head.requires_grad_(True)
        self.update_ema("generator")
        return metrics

    def train_step(self) -> dict:
        metrics = self.fake_step()
        s = self.step  # number of completed steps before this one
        if s >= self.cfg.optim.fake_warmup_steps and (s - self.cfg.optim.fake_warmup_steps) % self.fake_per_gen == 0:
            metrics.update(self.generator_step())
        return metrics

    # -- evaluation and export -----------------------------------------------------------------------
    @torch.no_grad()
    def one_step_samples(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        gen = self.ema_generator
        labels = draw_labels(self.source, n, g)
        cond = None if labels is None else Condition(class_labels=labels.to(self.accelerator.device))
        z = torch.randn(gen.sample_shape(n), generator=g).to(self.accelerator.device)
        return gen(z, cond).float().cpu(), labels

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
            image_grid(self.out / f"samples_{tag}.png", x)
            return {}
        dist = self.source.dist
        x, labels = self.one_step_samples(n, seed)
        ref = dist.sample(n, torch.Generator().manual_seed(seed + 1), class_labels=labels)
        student = exact_metrics(dist, x, ref)
        if self._teacher_reference is None:
            xt = self.teacher_samples(n, seed + 2, labels)
            self._teacher_reference = (xt, exact_metrics(dist, xt, ref))
        xt, teacher = self._teacher_reference
        nfe = 2 * self.cfg.eval.teacher_steps - 1
        name = self.method.name + (f" ({self.method.divergence.name})" if hasattr(self.method, "divergence") else "")
        scatter_plot(self.out / f"samples_{tag}.png",
                     {"truth (exact samples)": ref, f"teacher, {nfe} NFE": xt, f"student {name}, 1 NFE": x},
                     title=f"{dist.name} — step {self.step}", lim=1.6)
        result = {"student": student, "teacher": teacher, "teacher_nfe": nfe, "student_nfe": 1, "step": self.step,
                  "method": name}
        (self.out / f"eval_{tag}.json").write_text(json.dumps(result, indent=1))
        return {f"student/{k}": v for k, v in student.items()} | {f"teacher/{k}": v for k, v in teacher.items()}

    def export(self):
        if self.is_main:
            OneStepPipeline(student=self.ema_generator).save_pretrained(str(self.out / "pipeline"))


def distill(cfg: DistillConfig) -> dict:
    return DistillTrainer(cfg).fit()
