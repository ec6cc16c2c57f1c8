"""One-step distillation: the shared score-difference step and the methods as small classes on it (methods.md §1–2).

Per generator step:  x = G(z)  →  x_σ = x + σn  →  Dᵀ(x_σ) (guided), Dᶠ(x_σ), discriminator logits ℓ(x_σ)  →
per-sample weight w  →  kernel g = w·(Dᶠ − Dᵀ)/c  →  surrogate ½‖x − sg(x − g)‖² (+ GAN term). The score-identity
methods (SiD, Uni-Instruct, ``score_identity.py``) keep input gradients through Dᵀ and Dᶠ instead.

A method is one class. It declares
  * ``Options``: the dataclass its ``method:`` config section is validated against (unknown keys are errors),
  * ``build_auxiliaries``: the networks it trains besides the generator (fake score, discriminator head, ...),
    each stepped with the optimiser ``optim.lr_<name>``,
  * ``auxiliary_loss`` / ``generator_loss``: the two updates, on what the trainer draws (``DistillBatch``),
  * its defaults: fake:generator update ratio, generator σ distribution, σ_init.
Subclasses register themselves by ``name``; the trainer looks a method up and never branches on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..condition import Condition
from ..kernels import BACKENDS, SigmaBinNormalizer, batch_normalized, density_ratio, resolve_backend, weighted_difference
from ..kernels.fused_weighting import fdistill_weighting_compiled, fdistill_weighting_triton
from ..kernels.native_cpu import fdistill_weighting_cpp
from ..models.discriminator import discriminator_loss, generator_gan_loss
from ..space import append_dims
from .denoising import denoising_loss, weighted_denoising_error
from .divergences import DIVERGENCES, get_divergence

METHODS: dict[str, type["DistillationMethod"]] = {}


@dataclass
class StepContext:
    """Everything a method may weigh, evaluated once per generator step."""

    x: torch.Tensor                      # generator samples (carry the generator's graph)
    sigma: torch.Tensor                  # [B]
    x_sigma: torch.Tensor                # x + σ·n
    cond: Condition | None
    d_teacher: torch.Tensor              # Dᵀ(x_σ): no grad, or a graph to x_σ with ``input_grad``
    d_fake: torch.Tensor                 # Dᶠ(x_σ): likewise
    logits: torch.Tensor | None = None   # discriminator logits at x_σ (graph to x when the GAN term is on)


@dataclass
class DistillBatch:
    """What the trainer hands a method for one update: samples and the seeded draws it may make."""

    x: torch.Tensor                                          # G(z): with graph (generator step) or detached
    cond: Condition | None
    teacher: nn.Module                                       # the (guided) teacher denoiser, frozen
    generator: nn.Module                                     # G, for terms on other inputs (regression pairs)
    rng: torch.Generator                                     # the trainer's data generator (exact resume)
    draw_sigma: Callable[[str, int], torch.Tensor]           # "generator" | "fake" → σ [B]
    draw_real: Callable[[int], tuple[torch.Tensor, Condition | None]]
    step: int = 0                                            # completed training steps (divergence schedules)

    def randn_like(self, t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=self.rng).to(t.device)


@dataclass
class MethodSetup:
    """Set-up facts a method may use once (e.g. to precompute teacher regression pairs)."""

    teacher: nn.Module
    sample_shape: Callable[[int], tuple]
    draw_condition: Callable[[int, torch.Generator], Condition | None]  # n conditions as training draws them (CPU)
    seed: int
    device: torch.device
    teacher_steps: int


class NetworkFactory:
    """Builds auxiliary networks for a method; provided by the trainer (it knows the teacher and the data)."""

    def score_network(self, scalar: str | None = None) -> nn.Module:
        """A denoiser like the teacher (a trainable copy of it, or new), with an extra scalar condition if named."""
        raise NotImplementedError

    def discriminator_head(self, on: nn.Module) -> nn.Module:   # a head on ``on``'s bottleneck features
        raise NotImplementedError


class EncoderDiscriminator(nn.Module):
    """SiDA's discriminator: the channel mean of the fake network's bottleneck, one logit per sample.

    It has no parameters of its own; training it trains the fake network's encoder (SiDA, methods.md §1).
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.float().flatten(1).mean(1)


def surrogate_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½·mean((x − sg(x − g))²): ∂L/∂x = g/numel(x), and no gradient reaches teacher or fake networks."""
    return 0.5 * torch.nn.functional.mse_loss(x.float(), (x.detach().float() - g.float()))


def score_difference_step(x, teacher, fake, sigma, cond=None, discriminator=None, gan_grad: bool = False,
                          generator=None, input_grad: bool = False) -> StepContext:
    """Noise generator samples and evaluate teacher, fake score and (optionally) discriminator at the same x_σ.

    ``teacher`` may be a guided denoiser (ClassifierFreeGuidance); ``discriminator`` is a head on the fake
    network's bottleneck features. With ``gan_grad`` the fake pass keeps the graph from x_σ to the logits; with
    ``input_grad`` (score-identity methods) both denoisings keep their graph to x_σ. Network weights are never
    updated by the generator step: the trainer only steps the generator.
    """
    if x.shape[0] != sigma.shape[0]:
        raise ValueError(f"sigma must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device) if generator is not None \
        else torch.randn_like(x, dtype=torch.float32)
    x_sigma = x + append_dims(sigma, x.ndim) * noise
    with torch.set_grad_enabled(input_grad):
        d_teacher = teacher(x_sigma if input_grad else x_sigma.detach(), sigma, cond)
    if d_teacher.shape != x.shape:
        raise ValueError(f"teacher output shape {tuple(d_teacher.shape)} does not match generator output {tuple(x.shape)}")
    logits = None
    fake_in = x_sigma if (input_grad or gan_grad) else x_sigma.detach()
    if discriminator is None:
        with torch.set_grad_enabled(input_grad):
            d_fake = fake(fake_in, sigma, cond)
    else:
        with torch.set_grad_enabled(input_grad or gan_grad):
            d_fake, feats = fake(fake_in, sigma, cond, return_features=True)
            logits = discriminator(feats if gan_grad else feats.detach())
        if not input_grad:
            d_fake = d_fake.detach()
    if d_fake.shape != x.shape:
        raise ValueError(f"fake score output shape {tuple(d_fake.shape)} does not match generator output {tuple(x.shape)}")
    return StepContext(x=x, sigma=sigma, x_sigma=x_sigma, cond=cond, d_teacher=d_teacher, d_fake=d_fake, logits=logits)


# -------------------------------------------------------------------------------------------------
# Options
# -------------------------------------------------------------------------------------------------
@dataclass
class MethodOptions:
    fake_updates_per_generator_update: int | None = None  # TTUR; None: the method's paper default
    kernel_backend: str = "auto"                           # auto | eager | compile | triton | cpp

    def validate(self):
        """Raise ValueError naming the option; called when the config is loaded, before any work."""
        k = self.fake_updates_per_generator_update
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"method.fake_updates_per_generator_update must be a positive integer, got {k!r}")
        if self.kernel_backend not in ("auto", *BACKENDS):
            raise ValueError(f"method.kernel_backend: unknown backend {self.kernel_backend!r}; choose auto or one of {BACKENDS}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith(("gan_weight", "regression_weight")) and v is not None and not v >= 0:
                raise ValueError(f"method.{f.name} must be ≥ 0, got {v!r}")


@dataclass
class DMDOptions(MethodOptions):
    regression_weight: float = 0.0    # DMD: MSE to the teacher's ODE outputs on fixed noise pairs (LPIPS in the paper)
    regression_pairs: int = 256

    def validate(self):
        super().validate()
        if self.regression_pairs < 1:
            raise ValueError(f"method.regression_pairs must be ≥ 1, got {self.regression_pairs}")


@dataclass
class GANOptions:
    gan_weight_gen: float = 3e-3      # generator: λ_G·softplus(−ℓ_fake) (DMD2 3e-3)
    gan_weight_disc: float = 1e-2     # discriminator loss added to the fake-score loss (DMD2 1e-2, methods.md §1)


@dataclass
class DMD2Options(DMDOptions, GANOptions):
    pass


@dataclass
class RatioOptions:
    """How r = p_σ/q_σ is read from the discriminator logit (NVIDIA's f-distill estimator, methods.md §2)."""

    divergence: str = "jensen_shannon"   # a name, short name or alpha:<a> (a callable f in Python)
    logit_clamp: float = 10.0
    ratio_min: float = 0.1
    ratio_max: float = 20.0
    sigma_bins: int = 10                 # 0: no σ-bin normalisation of r
    bin_ema: float = 0.0
    bin_spacing: str = "linear"          # linear (NVIDIA's equal-width bins in σ) | log (equal width in log σ)
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def validate_ratio(self):
        if not (self.ratio_max > self.ratio_min >= 0):
            raise ValueError(f"method.ratio_min/ratio_max must satisfy 0 ≤ min < max, got {self.ratio_min}, {self.ratio_max}")
        if self.logit_clamp <= 0:
            raise ValueError(f"method.logit_clamp must be > 0, got {self.logit_clamp}")
        if self.sigma_bins < 0:
            raise ValueError(f"method.sigma_bins must be ≥ 0, got {self.sigma_bins}")
        if not 0 <= self.bin_ema < 1:
            raise ValueError(f"method.bin_ema must be in [0, 1), got {self.bin_ema}")
        if self.bin_spacing not in ("linear", "log"):
            raise ValueError(f"method.bin_spacing must be linear or log, got {self.bin_spacing!r}")
        try:
            div = get_divergence(self.divergence)
        except (ValueError, TypeError) as e:
            raise ValueError(f"method.divergence: {e}") from e
        # r = exp(clamp(ℓ, ±logit_clamp)) clamped to [ratio_min, ratio_max]: probe h over that range
        lo = max(self.ratio_min, math.exp(-self.logit_clamp))
        hi = min(self.ratio_max, math.exp(self.logit_clamp))
        probe = torch.logspace(math.log10(lo), math.log10(hi), 41, dtype=torch.float64)
        h = div.h(probe)
        bad = ~torch.isfinite(h) | (h < -1e-6)  # f convex ⇔ h ≥ 0 (tolerance for autograd round-off)
        if bad.any():
            raise ValueError(f"method.divergence {div.name!r}: h(r) = f''(r)r² is not finite and ≥ 0 on the ratio range "
                             f"[{lo:.3g}, {hi:.3g}] (at r = {probe[bad][0].item():.3g}); narrow method.ratio_min/"
                             "ratio_max/logit_clamp or choose another divergence")


@dataclass
class FDistillOptions(DMD2Options, RatioOptions):
    gan_weight_gen: float = 1e-3
    normalize_weights: bool = True       # ĥ = h / batch mean of h

    def validate(self):
        super().validate()
        self.validate_ratio()


# -------------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------------
class DistillationMethod:
    """A weighting and update rule on the shared step. Subclasses set ``name`` and ``Options`` and override hooks."""

    name = "base"
    Options = MethodOptions
    normalize_by_teacher_residual = True   # c = mean|x − Dᵀ| (DMD); False → c = 1
    uses_discriminator = False             # train a discriminator head next to the fake score
    needs_teacher = True                   # False: trains from data alone (SMT); teacher.source=none
    default_fake_updates = 1               # fake-score updates per generator update (TTUR)
    default_sigma_init = 80.0              # G(z) = D(σ_init z, σ_init)
    default_sigma_generator = {"kind": "lognormal"}   # EDM's training σ; image configs set DMD2's Karras range

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("name"):
            METHODS[cls.name] = cls

    @classmethod
    def needs_real_data(cls) -> bool:
        """Real samples feed a discriminator, or are the only signal without a teacher; DMD, Diff-Instruct and SiD
        distil from the teacher alone (data-free)."""
        return cls.uses_discriminator or not cls.needs_teacher

    def __init__(self, options: MethodOptions | None = None, **kwargs):
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            raise TypeError("pass either an options dataclass or keyword options, not both")
        options.validate()
        self.options = options

    def __getattr__(self, item):  # options read as attributes: method.gan_weight_gen, method.divergence_name ...
        options = self.__dict__.get("options")
        if options is not None and hasattr(options, item):
            return getattr(options, item)
        raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")

    @property
    def fake_updates(self) -> int:
        return self.options.fake_updates_per_generator_update or self.default_fake_updates

    @property
    def label(self) -> str:
        """Name shown in plots and tables (with the divergence where there is one)."""
        div = getattr(self, "divergence", None)
        return self.name + (f" ({div.name})" if div is not None else "")

    # -- set-up ------------------------------------------------------------------------------------
    def prepare(self, setup: MethodSetup):
        """Called once before training (e.g. to precompute regression targets)."""

    def build_auxiliaries(self, factory: NetworkFactory) -> dict[str, nn.Module]:
        nets = {"fake": factory.score_network()}
        if self.uses_discriminator:
            nets["discriminator"] = factory.discriminator_head(nets["fake"])
        return nets

    def state_modules(self) -> dict:
        """Modules with state that belongs in checkpoints (e.g. σ-bin ratio means)."""
        return {}

    # -- the auxiliary update: fake score (+ discriminator) ---------------------------------------------
    def auxiliary_loss(self, nets: dict, batch: DistillBatch) -> tuple[torch.Tensor, dict]:
        """Fake score: EDM denoising on detached generator samples; discriminator: logistic loss in the same pass."""
        x_fake, cond, bs = batch.x, batch.cond, batch.x.shape[0]
        fake, head = nets["fake"], nets.get("discriminator")
        sigma = batch.draw_sigma("fake", bs)
        noise = batch.randn_like(x_fake)
        if head is None:
            loss = denoising_loss(fake, x_fake, cond, sigma=sigma, noise=noise)
            return loss, {"fake_loss": float(loss.detach())}
        # one fake-network pass over [generated; generated at σ_gan; real] so DDP sees a single forward per backward
        x_real, real_cond = batch.draw_real(bs)
        sigma_real = batch.draw_sigma("generator", bs)
        sigma_gan = batch.draw_sigma("generator", bs)
        noise_gan = batch.randn_like(x_fake)
        x_in = torch.cat([x_fake + append_dims(sigma, x_fake.ndim) * noise,
                          x_fake + append_dims(sigma_gan, x_fake.ndim) * noise_gan,
                          x_real + append_dims(sigma_real, x_fake.ndim) * batch.randn_like(x_fake)])
        all_cond = None if cond is None else Condition.cat([cond, cond, real_cond])
        denoised, feats = fake(x_in, torch.cat([sigma, sigma_gan, sigma_real]), all_cond, return_features=True)
        dsm = weighted_denoising_error(denoised[:bs], x_fake, sigma).mean()
        logits = head(feats[bs:])  # [generated at σ_gan; real at σ_real]
        d_loss = discriminator_loss(logits[bs:], logits[:bs])
        loss = dsm + self.options.gan_weight_disc * d_loss
        acc = ((logits[bs:] > 0).float().mean() + (logits[:bs] < 0).float().mean()) / 2
        return loss, {"fake_loss": float(dsm.detach()), "disc_loss": float(d_loss.detach()), "disc_acc": float(acc.detach())}

    # -- the generator update -------------------------------------------------------------------------
    def step_context(self, nets: dict, batch: DistillBatch, input_grad: bool = False) -> StepContext:
        head = nets.get("discriminator")
        sigma = batch.draw_sigma("generator", batch.x.shape[0])
        gan_grad = head is not None and getattr(self.options, "gan_weight_gen", 0.0) > 0
        return score_difference_step(batch.x, batch.teacher, nets["fake"], sigma, batch.cond, discriminator=head,
                                     gan_grad=gan_grad, generator=batch.rng, input_grad=input_grad)

    def weights(self, ctx: StepContext) -> torch.Tensor | None:
        return None  # w ≡ 1

    def pseudo_gradient(self, ctx: StepContext) -> torch.Tensor:
        return weighted_difference(ctx.x.detach(), ctx.d_teacher, ctx.d_fake, self.weights(ctx),
                                   normalize=self.normalize_by_teacher_residual, backend=self.options.kernel_backend)

    def generator_loss(self, ctx_or_nets, batch: DistillBatch | None = None) -> tuple[torch.Tensor, dict]:
        """The generator's loss: from a StepContext, or from the auxiliary networks and a batch (trainer)."""
        ctx = ctx_or_nets if batch is None else self.step_context(ctx_or_nets, batch)
        g = self.pseudo_gradient(ctx)
        loss = surrogate_loss(ctx.x, g)
        metrics = {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}
        loss = self.add_gan_term(loss, ctx, metrics)
        if batch is not None:
            loss = self.add_extra_terms(loss, batch, metrics)
        return loss, metrics

    def add_gan_term(self, loss, ctx: StepContext, metrics: dict):
        weight = getattr(self.options, "gan_weight_gen", 0.0)
        if weight > 0 and ctx.logits is not None and ctx.logits.requires_grad:
            gan = generator_gan_loss(ctx.logits)
            metrics["gan_gen_loss"] = float(gan.detach())
            loss = loss + weight * gan
        return loss

    def add_extra_terms(self, loss, batch: DistillBatch, metrics: dict):
        return loss


class DiffInstruct(DistillationMethod):
    """Diff-Instruct: g = Dᶠ − Dᵀ (weight 1, no normaliser), fake score and generator updated 1:1."""

    name = "diff_instruct"
    normalize_by_teacher_residual = False


class DMD(DistillationMethod):
    """DMD: g = (Dᶠ − Dᵀ)/mean|x − Dᵀ|, optionally + a regression to teacher ODE pairs (MSE instead of LPIPS)."""

    name = "dmd"
    Options = DMDOptions

    def prepare(self, setup: MethodSetup):
        self.regression_pairs_data = self._make_regression_pairs(setup) if self.options.regression_weight else None

    @staticmethod
    @torch.no_grad()
    def _make_pairs(setup: MethodSetup, n: int):
        from ..sampling import sample_heun
        from ..space import karras_sigmas

        g = torch.Generator().manual_seed(setup.seed + 123)
        cond = setup.draw_condition(n, g)
        z = torch.randn(setup.sample_shape(n), generator=g)
        sigmas = karras_sigmas(setup.teacher_steps, device=setup.device)
        x = sample_heun(setup.teacher, z.to(setup.device) * sigmas[0], sigmas,
                        cond=None if cond is None else cond.to(setup.device))
        return z, x, cond

    def _make_regression_pairs(self, setup: MethodSetup):
        return self._make_pairs(setup, self.options.regression_pairs)

    def add_extra_terms(self, loss, batch: DistillBatch, metrics: dict):
        pairs = getattr(self, "regression_pairs_data", None)
        if pairs is None:
            return loss
        z, target, pcond = pairs
        idx = torch.randint(0, len(z), (batch.x.shape[0],), generator=batch.rng)
        pc = None if pcond is None else pcond.index(idx).to(batch.x.device)
        reg = torch.nn.functional.mse_loss(batch.generator(z[idx].to(batch.x.device), pc).float(), target[idx])
        metrics["regression_loss"] = float(reg.detach())
        return loss + self.options.regression_weight * reg


class DMD2(DMD):
    """DMD2: DMD + a GAN head on the fake network's bottleneck, two-time-scale updates (5 fake : 1 generator)."""

    name = "dmd2"
    Options = DMD2Options
    uses_discriminator = True
    default_fake_updates = 5


class RatioWeights:
    """r from the discriminator logit (never from a loss value), σ-bin and batch normalisation: f-distill's estimator."""

    def init_ratio(self):
        o = self.options
        self.divergence = get_divergence(o.divergence)
        self.bins = SigmaBinNormalizer(o.sigma_bins, o.sigma_min, o.sigma_max, o.bin_ema, spacing=o.bin_spacing) \
            if o.sigma_bins else None

    def ratio(self, ctx: StepContext) -> torch.Tensor:
        if ctx.logits is None:
            raise ValueError(f"{self.name} needs discriminator logits: the discriminator supplies the density ratio r")
        o = self.options
        r = density_ratio(ctx.logits, o.logit_clamp, o.ratio_min, o.ratio_max)
        if self.bins is not None:
            self.bins.to(r.device)
            r = self.bins(r, ctx.sigma)
        return r

    def state_modules(self) -> dict:
        return {"ratio_bins": self.bins} if self.bins is not None else {}


class FDistill(RatioWeights, DMD2):
    """f-distill: g = ĥ(r)·(Dᶠ − Dᵀ)/mean|x − Dᵀ| with r = exp(ℓ) from the discriminator,
    r normalised by its running mean per σ bin, h = f''(r)r², ĥ = h / batch mean of h (methods.md §2)."""

    name = "f_distill"
    Options = FDistillOptions

    def __init__(self, divergence=None, options=None, **kw):
        if isinstance(divergence, MethodOptions):
            divergence, options = None, divergence
        if divergence is not None:
            kw["divergence"] = divergence
        super().__init__(options, **kw)
        self.init_ratio()

    def weights(self, ctx: StepContext) -> torch.Tensor:
        h = self.divergence.h(self.ratio(ctx))
        return batch_normalized(h) if self.options.normalize_weights else h

    def pseudo_gradient(self, ctx: StepContext) -> torch.Tensor:
        """With the compile, triton or cpp backend, in one process and a closed-form h, the whole weighting is one
        region: a compiled function (kernels/fused_weighting.py), two Triton kernels, or one C++ function
        (kernels/native_cpu.py); otherwise the eager composition."""
        backend = self._fused_backend(ctx)
        if backend is None:
            return super().pseudo_gradient(ctx)
        o, bins = self.options, self.bins
        if bins is not None and bins.means.device != ctx.x.device:  # Module.to costs ~15 µs even as a no-op
            bins.to(ctx.x.device)
        h = self.divergence.name if backend in ("cpp", "triton") else self.divergence.h
        fused = {"compile": fdistill_weighting_compiled, "triton": fdistill_weighting_triton,
                 "cpp": fdistill_weighting_cpp}[backend]
        g, means, seen = fused(
            ctx.x.detach(), ctx.d_teacher, ctx.d_fake, ctx.logits, ctx.sigma,
            bins.edges if bins is not None else None, bins.means if bins is not None else None,
            bins.seen if bins is not None else None, h, o.logit_clamp, o.ratio_min, o.ratio_max,
            o.bin_ema, bins is not None, o.normalize_weights, self.normalize_by_teacher_residual)
        if bins is not None and means is not bins.means:  # the C++ function updates the bin state in place
            bins.means.copy_(means)
            bins.seen.copy_(seen)
        return g

    def _fused_backend(self, ctx: StepContext) -> str | None:
        backend = resolve_backend(self.options.kernel_backend, ctx.x.device, ctx.x.ndim)
        if ctx.logits is None or backend == "eager":
            return None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        closed_form = self.divergence.name in DIVERGENCES or self.divergence.name.startswith("alpha:")
        # a closed-form h traces (and has a kernel code); h from a callable f (autograd) does not
        plain = backend == "compile" or ctx.x.dtype == torch.float32
        return backend if not distributed and closed_form and plain else None

    def _fused_path(self, ctx: StepContext) -> bool:
        return self._fused_backend(ctx) is not None


def method_class(name: str) -> type[DistillationMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(name: str, **kwargs) -> DistillationMethod:
    return method_class(name)(**kwargs)
