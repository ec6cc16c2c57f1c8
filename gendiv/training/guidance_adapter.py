"""Adapter guidance distillation (AGD; docs/guidance.md §6): train a guidance adapter on the teacher's frozen
weights so that one pass gives its two-pass CFG prediction, on the states CFG-guided sampling visits.

A step draws a batch from a pool of CFG trajectories: each trajectory has its own condition c and scale
s ~ U[scale_min, scale_max], and runs the teacher's CFG sampler (Euler or Heun on ``trajectories.num_steps``
Karras σ) from noise; the pool keeps every state (x, σ_i) the sampler evaluated and the CFG prediction there, which
is the (detached) target. The loss is EDM's weighted MSE in x̂₀ space (docs/methods.md §0.2),

    L = E λ(σ)·mean (D_A(x, σ, c, s) − [D_∅ + s·(D_c − D_∅)](x, σ))²,    λ(σ) = 1/σ² + 1/σ_d².

The pool is redrawn every ``trajectories.refresh_every`` steps from its own seeded stream (seed, pool index), so a
resumed run trains on the same pools. Neither a ``DistillMethod`` nor a teacher objective fits: the distillation
trainer's student is a one-step generator that it builds and exports itself, and teacher objectives learn from data,
while AGD learns from the teacher's own guided trajectories and exports a guided denoiser. So this is its own small
trainer on the shared loop (``loop.py``): checkpoints, exact resume and logs are the loop's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..condition import Condition, with_guidance_scale
from ..guidance.adapter import LoraGuidanceAdapter, ResidualGuidanceAdapter, cfg_prediction
from ..models.lora import DEFAULT_TARGETS, LoraSpec
from ..models.teachers import load_teacher
from ..sampling import SAMPLERS
from ..space import edm_loss_weight, karras_sigmas, vp_sigmas_from_alphas_cumprod
from ..toy import AnalyticDenoiser
from .config import ConfigError, check, check_optimizer, to_dict
from .distill import TeacherConfig
from .loop import RunConfig, TrainingLoop
from .performance import teacher_is_image_model


@dataclass
class AdapterTeacherConfig(TeacherConfig):
    """The teacher (``analytic:<toy>``, a gendiv or Stable Diffusion-shaped folder) and, for text teachers, prompts;
    the empty prompt is CFG's unconditional pass. Its scales are the trajectories' (``trajectories.scale_*``)."""

    def __post_init__(self):
        super().__post_init__()
        check(self.guidance_scale == 1.0 and not self.guider, "teacher.guidance_scale / teacher.guider: the adapter "
              "learns CFG over a range of scales; set trajectories.scale_min and trajectories.scale_max instead")


@dataclass
class AdapterSection:
    kind: str = "auto"                 # auto | residual (closed-form or MLP teachers) | lora (diffusers UNets)
    hidden: int = 128                  # residual: MLP width; lora: scale-embedding width
    depth: int = 3                     # residual: residual blocks
    embed_dim: int = 32                # Fourier features of σ and s
    rank: int = 8                      # lora: rank r, alpha α (None: α = r), target modules
    alpha: float | None = None
    target_modules: list = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self):
        check(self.kind in ("auto", "residual", "lora"),
              f"adapter.kind must be auto, residual or lora, got {self.kind!r}")
        for key in ("hidden", "depth", "embed_dim", "rank"):
            check(getattr(self, key) >= 1, f"adapter.{key} must be ≥ 1, got {getattr(self, key)}")
        check(self.embed_dim % 2 == 0, f"adapter.embed_dim must be even (sin and cos pairs), got {self.embed_dim}")
        check(self.alpha is None or self.alpha > 0, f"adapter.alpha must be > 0, got {self.alpha}")
        check(bool(self.target_modules), "adapter.target_modules must name at least one module (e.g. to_q)")


@dataclass
class TrajectorySection:
    scale_min: float = 1.0             # s ~ U[scale_min, scale_max] per trajectory (diffusers' s; 1 = conditional)
    scale_max: float = 5.0
    num_steps: int = 18                # Karras σ grid of the teacher's CFG sampler
    sampler: str = "euler"             # euler | heun (states are kept at the grid points)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    pool: int = 1024                   # trajectories per pool (× num_steps training states)
    refresh_every: int = 0             # steps between fresh pools (0: one pool for the whole run)

    def __post_init__(self):
        check(1.0 <= self.scale_min <= self.scale_max, "trajectories.scale_min and scale_max must satisfy "
              f"1 ≤ scale_min ≤ scale_max (s = 1 is the conditional model), got {self.scale_min}, {self.scale_max}")
        check(self.sampler in SAMPLERS, f"trajectories.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        check(self.num_steps >= 1 and self.pool >= 1, "trajectories.num_steps and trajectories.pool must be ≥ 1, got "
              f"{self.num_steps}, {self.pool}")
        check(0 < self.sigma_min < self.sigma_max, "trajectories.sigma_min and sigma_max must satisfy 0 < sigma_min < "
              f"sigma_max, got {self.sigma_min}, {self.sigma_max}")
        check(self.refresh_every >= 0,
              f"trajectories.refresh_every must be ≥ 0 (0: one pool), got {self.refresh_every}")


@dataclass
class AdapterOptimConfig:
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0

    def __post_init__(self):
        check_optimizer("optim", [("lr", self.lr)], self.betas, self.weight_decay, 0.0)


@dataclass
class GuidanceAdapterConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/guidance_adapter", steps=1500,
                                                             batch_size=256, checkpoint_every=500, sample_every=0))
    teacher: AdapterTeacherConfig = field(default_factory=lambda: AdapterTeacherConfig(source="analytic:conditional2d"))
    adapter: AdapterSection = field(default_factory=AdapterSection)
    trajectories: TrajectorySection = field(default_factory=TrajectorySection)
    optim: AdapterOptimConfig = field(default_factory=AdapterOptimConfig)


@dataclass
class TrajectoryPool:
    """Training states of CFG trajectories: x at σ, condition, scale s and the CFG prediction there (the target)."""

    x: torch.Tensor
    sigma: torch.Tensor
    cond: Condition
    scale: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor) -> "TrajectoryPool":
        return TrajectoryPool(self.x[idx], self.sigma[idx], self.cond.index(idx), self.scale[idx], self.target[idx])


def build_adapter(teacher, section: AdapterSection):
    """The adapter the section names for this teacher (``auto``: residual on a closed-form or point teacher, LoRA
    on a network with a UNet)."""
    kind = section.kind
    if kind == "auto":
        kind = "residual" if isinstance(teacher, AnalyticDenoiser) or teacher.config.get("dim") else "lora"
    try:
        if kind == "residual":
            return ResidualGuidanceAdapter.for_teacher(teacher, hidden=section.hidden, depth=section.depth,
                                                       embed_dim=section.embed_dim)
        spec = LoraSpec(rank=section.rank, alpha=section.alpha, target_modules=list(section.target_modules))
        return LoraGuidanceAdapter(teacher, spec, embed_dim=section.embed_dim, hidden=section.hidden)
    except (ValueError, TypeError) as e:  # e.g. peft finds no target module
        raise ConfigError(f"adapter.kind={kind}: {str(e).splitlines()[0]}") from None


def teacher_sigma_range(teacher, section: TrajectorySection) -> TrajectorySection:
    """The section's σ range narrowed to what a VP (DDPM-family) teacher was trained on, as its pipeline does."""
    if teacher.config.get("parameterization") != "vp":
        return section
    grid = vp_sigmas_from_alphas_cumprod(teacher.alphas_cumprod)
    lo, hi = max(section.sigma_min, float(grid.min())), min(section.sigma_max, float(grid.max()))
    return dataclasses.replace(section, sigma_min=lo, sigma_max=hi)


@torch.no_grad()
def cfg_trajectories(teacher, cond: Condition, scale: torch.Tensor, shape: tuple, section: TrajectorySection,
                     generator: torch.Generator, device) -> TrajectoryPool:
    """Run the teacher's CFG sampler (per-trajectory scale) from noise and keep every state it evaluated."""
    sigmas = karras_sigmas(section.num_steps, section.sigma_min, section.sigma_max, device=device)
    x = torch.randn(shape, generator=generator).to(device) * sigmas[0]
    states, cond, scale = [], cond.to(device), scale.to(device)

    def guided(x, sigma, c):
        return cfg_prediction(teacher, x, sigma, c, scale)

    def keep(info):  # the sampler's own state and CFG prediction at σ_i (Heun's corrector states are not kept)
        states.append((info["x"], info["sigma"].expand(shape[0]), info["denoised"]))

    SAMPLERS[section.sampler](guided, x, sigmas, cond, callback=keep)
    xs, sig, target = (torch.cat(t) for t in zip(*states))
    n = len(states)
    return TrajectoryPool(xs, sig.float(), Condition.cat([cond] * n), scale.repeat(n), target)


class GuidanceAdapterTrainer(TrainingLoop):
    def __init__(self, cfg: GuidanceAdapterConfig):
        super().__init__(cfg.run, to_dict(cfg), image_data=teacher_is_image_model(cfg.teacher.source))
        self.cfg = cfg
        teacher, _, self.text_teacher = load_teacher(cfg.teacher.source, null_class=cfg.teacher.null_class)
        device = self.accelerator.device
        self.prompt_embeds = None
        if self.text_teacher is not None:
            self.prompt_embeds = self.text_teacher.encode(cfg.teacher.prompt_list()).to(device)
        elif teacher.config.get("num_classes") is None:
            raise ConfigError(f"teacher.source: {cfg.teacher.source} is unconditional; CFG (and so a guidance adapter) "
                              "needs a class-conditional or text-conditioned teacher")
        adapter = build_adapter(teacher.to(device).eval().requires_grad_(False), cfg.adapter).to(device)
        self.teacher = adapter.teacher
        self.section = teacher_sigma_range(teacher, cfg.trajectories)
        params = [p for p in adapter.parameters() if p.requires_grad]
        o = cfg.optim
        self.net, self.opt = self.accelerator.prepare(adapter, self.optimizer(params, o.lr, o.betas, o.weight_decay))
        self.adapter = self.accelerator.unwrap_model(self.net)
        self.pool, self.pool_index = None, None

    # -- trajectories ---------------------------------------------------------------------------------
    def draw_conditions(self, n: int, generator: torch.Generator) -> Condition:
        """n conditions: prompts uniformly from teacher.prompts, or class labels uniformly."""
        if self.prompt_embeds is not None:
            idx = torch.randint(0, len(self.prompt_embeds), (n,), generator=generator)
            return Condition(text_embeds=self.prompt_embeds[idx.to(self.prompt_embeds.device)])
        return Condition(class_labels=torch.randint(0, self.teacher.config["num_classes"], (n,), generator=generator))

    def make_pool(self, n: int, seed: int) -> TrajectoryPool:
        t = self.section
        g = torch.Generator().manual_seed(seed)
        cond = self.draw_conditions(n, g)
        scale = t.scale_min + (t.scale_max - t.scale_min) * torch.rand(n, generator=g, dtype=torch.float64)
        return cfg_trajectories(self.teacher, cond, scale.float(), self.adapter.sample_shape(n), t, g,
                                self.accelerator.device)

    def _current_pool(self) -> TrajectoryPool:
        every = self.cfg.trajectories.refresh_every
        index = self.step // every if every else 0
        if index != self.pool_index:
            seed = (self.run.seed * 1_000_003 + index) * 7 + self.accelerator.process_index
            self.pool, self.pool_index = self.make_pool(self.cfg.trajectories.pool, seed), index
        return self.pool

    # -- a step ----------------------------------------------------------------------------------------
    def adapter_loss(self, net, batch: TrajectoryPool) -> torch.Tensor:
        """λ(σ)-weighted MSE of the one-pass prediction to the (detached) two-pass CFG target (module docstring)."""
        n = len(batch)
        pred = net(batch.x, batch.sigma, with_guidance_scale(batch.cond, batch.scale, n, batch.x.device))
        weight = edm_loss_weight(batch.sigma, self.adapter.config["sigma_data"])
        err = (pred.float() - batch.target.float()).pow(2).flatten(1).mean(1)
        return (weight * err).mean()

    def train_step(self) -> dict:
        pool = self._current_pool()
        idx = torch.randint(0, len(pool), (self.run.batch_size,), generator=self.gen)
        with self.accelerator.autocast():
            loss = self.adapter_loss(self.net, pool.batch(idx.to(pool.x.device)))
        self.check_finite("guidance adapter loss", loss)
        norm = self.clip_and_step(self.net, self.opt, loss, "adapter")
        return {"loss": self.mean_over_processes(loss), "grad_norm": norm}

    # -- evaluation and export -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, final: bool) -> dict:
        """RMS gap to the CFG target on held-out trajectories, of the adapter and of the conditional teacher."""
        if not self.is_main:
            return {}
        held_out = self.make_pool(min(256, self.cfg.trajectories.pool), seed=2**31 - 1 - self.run.seed)
        return guidance_gaps(self.adapter, self.teacher, held_out, self.adapter.config["sigma_data"])

    def export(self):
        """A residual adapter as a ``GenDivPipeline`` folder (sampled with ``guidance_scale=s``, one pass per
        step); a LoRA adapter as its weights, which ``LoraGuidanceAdapter.from_pretrained`` puts on the teacher."""
        if not self.is_main:
            return
        if isinstance(self.adapter, ResidualGuidanceAdapter):
            from ..pipelines import GenDivPipeline

            GenDivPipeline.from_denoiser(self.adapter).save_pretrained(str(self.out / "pipeline"))
        else:
            self.adapter.save_pretrained(self.out / "adapter")


@torch.no_grad()
def guidance_gaps(adapter, teacher, pool: TrajectoryPool, sigma_data: float = 0.5) -> dict:
    """Gaps to the two-pass CFG target over a pool's states, of the one-pass adapter and of the conditional teacher
    (what the untrained adapter predicts): RMS in x̂₀ space, and √(mean λ(σ)·err²), the training loss's weighting."""
    n = len(pool)
    pred = adapter(pool.x, pool.sigma, with_guidance_scale(pool.cond, pool.scale, n, pool.x.device))
    plain = teacher(pool.x, pool.sigma, pool.cond)
    weight = edm_loss_weight(pool.sigma, sigma_data)
    gaps = {}
    for name, d in (("adapter", pred - pool.target), ("conditional", plain - pool.target)):
        err = d.float().pow(2).flatten(1).mean(1)
        gaps[f"rms_gap_{name}"] = float(err.mean().sqrt())
        gaps[f"weighted_gap_{name}"] = float((weight * err).mean().sqrt())
    return gaps


def train_guidance_adapter(cfg: GuidanceAdapterConfig) -> dict:
    return GuidanceAdapterTrainer(cfg).fit()
