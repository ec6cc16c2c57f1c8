"""Teacher training: EDM-weighted denoising on any gendiv data source, under accelerate."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..condition import Condition
from ..objectives import denoising_loss
from ..pipelines import GenDivPipeline
from ..plotting import image_grid, scatter_plot
from ..sampling import SAMPLERS, sample
from ..space import SIGMA_SAMPLERS
from ..toy import exact_metrics
from .builders import DataConfig, ModelConfig, build_data, build_model
from .config import check, check_optimizer, to_dict
from .data import ToySource, draw_labels
from .loop import RunConfig, TrainingLoop


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    ema_decay: float = 0.995
    sigma_sampler: str = "lognormal"  # lognormal | karras_index | log_uniform
    cond_drop_prob: float = 0.1       # label → null class, so the model also learns p(x) for guidance

    def __post_init__(self):
        check_optimizer("optim", [("lr", self.lr)], self.betas, self.weight_decay, self.ema_decay)
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


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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


class DiffusionTrainer(TrainingLoop):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg.run, to_dict(cfg))
        self.cfg = cfg
        self.source = build_data(cfg.data)
        model = build_model(cfg.model, self.source)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                weight_decay=cfg.optim.weight_decay)
        self.model, self.opt = self.accelerator.prepare(model, opt)
        self.ema_model = self.add_ema("denoiser", self.model, cfg.optim.ema_decay)

    def train_step(self) -> dict:
        dev = self.accelerator.device
        x0, labels = self.source.sample_batch(self.run.batch_size, self.gen)
        cond = draw_condition(labels, self.cfg.optim.cond_drop_prob, self.gen)
        with self.accelerator.autocast():
            loss = denoising_loss(self.model, x0.to(dev), None if cond is None else cond.to(dev),
                                  sigma_sampler=self.cfg.optim.sigma_sampler, generator=self.gen)
        self.check_finite("denoising loss", loss)
        grad_norm = self.clip_and_step(self.model, self.opt, loss, "denoiser")
        self.update_ema("denoiser")
        return {"loss": self.mean_over_processes(loss), "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self, final: bool) -> dict:
        if not self.is_main:
            return {}
        n = self.cfg.eval.num_samples if isinstance(self.source, ToySource) else 64
        x, labels = sample_with(self.ema_model, self.source, n, self.cfg.eval, seed=self.run.seed + 1, device=self.accelerator.device)
        tag = "final" if final else f"step{self.step:07d}"
        if isinstance(self.source, ToySource):
            dist = self.source.dist
            ref = dist.sample(n, torch.Generator().manual_seed(self.run.seed + 2), class_labels=labels)
            cond = None if labels is None else Condition(class_labels=labels)
            metrics = exact_metrics(dist, x.cpu(), ref, cond=cond)
            scatter_plot(self.out / f"samples_{tag}.png", {"data (exact)": ref, f"teacher, {2 * self.cfg.eval.num_steps - 1} NFE": x},
                         title=f"{dist.name} — step {self.step}", reference=ref)
            return metrics
        image_grid(self.out / f"samples_{tag}.png", x, title=f"teacher samples ({self.cfg.eval.sampler}, "
                   f"{self.cfg.eval.num_steps} steps), step {self.step}")
        return {}

    def export(self):
        if self.is_main:
            GenDivPipeline.from_denoiser(self.ema_model).save_pretrained(str(self.out / "pipeline"))


def train(cfg: TrainConfig) -> dict:
    return DiffusionTrainer(cfg).fit()
