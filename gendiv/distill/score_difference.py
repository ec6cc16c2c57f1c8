"""The score-difference base (docs/methods.md §1): a fake score Dᶠ trained on the student's samples, and a student
update driven by Dᶠ − Dᵀ at a noised sample. DMD, Diff-Instruct, f-distill, SiD/SiDA, Uni-Instruct and SMT/SMD are
small subclasses. The base owns what they share: the fake score's warm-up, the fake:student update ratio (TTUR) and
DMD2's sample reuse (the student update first, then the fake update on the same, detached samples).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..kernels import weighted_difference
from .contract import STUDENT, DistillMethod, StepDraws, Update
from .losses import (FeatureSource, StepContext, denoising_loss, fake_score_and_discriminator_loss,
                     generator_gan_loss, score_difference_step, surrogate_loss)
from .options import KernelOptions, MethodOptions

FAKE = "fake"


class ScoreDifferenceOptions(MethodOptions):
    fake_updates_per_generator_update: int = Field(1, ge=1)   # TTUR: fake-score updates per student update
    fake_warmup_steps: int = Field(200, ge=0)                 # fake-score steps before the first student step
    # on student-update steps, train the fake score on that step's detached student samples instead of a fresh pass,
    # as DMD2 does; auto: for image models (points cost nothing to regenerate)
    reuse_generator_samples: Literal["auto"] | bool = "auto"


class ScoreDifferenceMethod(DistillMethod):
    """Two updates: ``fake`` (the fake score and any discriminator) and ``generator`` (the student).

    Subclasses say how the student's loss weighs the score difference (``generator_loss``) and, if they train more
    than a fake score, ``networks`` and ``fake_loss``.
    """

    Options = ScoreDifferenceOptions
    normalize_by_teacher_residual = True   # c = mean|x − Dᵀ| (DMD); False → c = 1

    def prepare(self, setup):
        reuse = self.options.reuse_generator_samples
        self.reuse_samples = setup.is_image if reuse == "auto" else bool(reuse)

    uses_discriminator = False             # a discriminator head (``gan`` section), trained in the fake update
    gan_features = FeatureSource()         # where the head reads: set by ``discriminator_network`` from gan options

    def needs_real_data(self) -> bool:
        return self.uses_discriminator or not self.needs_teacher

    def networks(self, factory):
        nets = {FAKE: factory.score_network()}
        if self.uses_discriminator:
            nets["discriminator"] = self.discriminator_network(factory, nets[FAKE])
        return nets

    def discriminator_network(self, factory, fake):
        """A head on the features ``gan.features`` / ``gan.layers`` name: the fake network's, or the frozen teacher's
        (remembered in ``gan_features`` for the losses)."""
        gan = getattr(self.options, "gan", None)
        features, layers = (gan.features, gan.layers) if gan is not None else ("fake", "bottleneck")
        self.gan_features = FeatureSource(factory.frozen_teacher() if features == "teacher" else None, layers)
        return self.discriminator_head(factory, self.gan_features.network or fake, layers)

    def discriminator_head(self, factory, on, layers: str):
        return factory.discriminator_head(on, layers=layers)

    def updates(self):
        """``fake`` trains every network the method declared (fake score, discriminator, ...)."""
        return (Update(FAKE, self.network_names), Update(STUDENT, (STUDENT,)))

    def schedule(self, step: int) -> tuple[str, ...]:
        o = self.options
        if step < o.fake_warmup_steps or (step - o.fake_warmup_steps) % o.fake_updates_per_generator_update:
            return (FAKE,)
        return (STUDENT, FAKE) if getattr(self, "reuse_samples", False) else (FAKE, STUDENT)

    def check_run(self, steps: int):
        if self.options.fake_warmup_steps >= steps:
            raise ValueError(f"method.fake_warmup_steps ({self.options.fake_warmup_steps}) ≥ run.steps ({steps}): the "
                             "student would never be updated; lower the warm-up or run longer")

    # -- samples -------------------------------------------------------------------------------------
    def student_samples(self, nets, draws: StepDraws, grad: bool):
        """(x, cond): a fresh student pass (with the student's graph if ``grad``), or, without grad and with sample
        reuse, the samples this step's student update already made."""
        if not grad and getattr(self, "reuse_samples", False) and "student_samples" in draws.cache:
            return draws.cache["student_samples"]
        cond = draws.condition(draws.batch_size)
        with torch.set_grad_enabled(grad):
            x = nets[STUDENT](draws.latents(draws.batch_size), cond).float()
        if grad:
            draws.cache["student_samples"] = (x.detach(), cond)
        return x, cond

    # -- losses --------------------------------------------------------------------------------------
    def loss(self, update, nets, draws):
        if update == FAKE:
            x, cond = self.student_samples(nets, draws, grad=False)
            return self.fake_loss(nets, x.detach(), cond, draws)
        x, cond = self.student_samples(nets, draws, grad=True)
        return self.generator_loss(nets, x, cond, draws)

    def fake_loss(self, nets, x_fake, cond, draws: StepDraws):
        """Fake score: EDM denoising on detached student samples (+ the discriminator's loss in the same pass)."""
        bs = x_fake.shape[0]
        sigma = draws.sigma("fake", bs)
        noise = draws.randn_like(x_fake)
        head = nets.get("discriminator")
        if head is None:
            loss = denoising_loss(nets[FAKE], x_fake, cond, sigma=sigma, noise=noise)
            return loss, {"fake_loss": float(loss.detach())}
        x_real, real_cond = draws.real(bs)
        sigma_real, sigma_gan = draws.sigma("generator", bs), draws.sigma("generator", bs)
        noise_gan = draws.randn_like(x_fake)
        return fake_score_and_discriminator_loss(nets[FAKE], head, x_fake, cond, sigma, noise, x_real, real_cond,
                                                 sigma_real, sigma_gan, noise_gan, draws.randn_like(x_fake),
                                                 self.options.gan.weight_disc, self.gan_features)

    def step_context(self, nets, x, cond, draws: StepDraws, input_grad: bool = False) -> StepContext:
        head = nets.get("discriminator")
        gan = getattr(self.options, "gan", None)
        gan_grad = head is not None and gan is not None and gan.weight_gen > 0
        return score_difference_step(x, draws.teacher, nets[FAKE], draws.sigma("generator", x.shape[0]), cond,
                                     discriminator=head, gan_grad=gan_grad, generator=draws.rng, input_grad=input_grad,
                                     features=self.gan_features)

    def generator_loss(self, nets, x, cond, draws: StepDraws):
        ctx = self.step_context(nets, x, cond, draws)
        loss, metrics = self.loss_from_context(ctx)
        return self.add_extra_terms(loss, nets, x, draws, metrics), metrics

    def loss_from_context(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """The surrogate whose gradient is the method's g (and its GAN term), from one evaluated step."""
        g = self.pseudo_gradient(ctx)
        loss = surrogate_loss(ctx.x, g)
        metrics = {"distill_loss": float(loss.detach()), "pseudo_grad_rms": float(g.pow(2).mean().sqrt())}
        return self.add_gan_term(loss, ctx, metrics), metrics

    def weights(self, ctx: StepContext) -> torch.Tensor | None:
        return None  # w ≡ 1

    def pseudo_gradient(self, ctx: StepContext) -> torch.Tensor:
        return weighted_difference(ctx.x.detach(), ctx.d_teacher, ctx.d_fake, self.weights(ctx),
                                   normalize=self.normalize_by_teacher_residual, backend=self.options.kernel_backend)

    def add_gan_term(self, loss, ctx: StepContext, metrics: dict):
        gan = getattr(self.options, "gan", None)
        if gan is not None and gan.weight_gen > 0 and ctx.logits is not None and ctx.logits.requires_grad:
            term = generator_gan_loss(ctx.logits)
            metrics["gan_gen_loss"] = float(term.detach())
            loss = loss + gan.weight_gen * term
        return loss

    def add_extra_terms(self, loss, nets, x, draws: StepDraws, metrics: dict):
        return loss


class DiffInstructOptions(ScoreDifferenceOptions, KernelOptions):
    name: Literal["diff_instruct"] = "diff_instruct"


class DiffInstruct(ScoreDifferenceMethod):
    """Diff-Instruct: g = Dᶠ − Dᵀ (weight 1, no normaliser), fake score and student updated 1:1."""

    name = "diff_instruct"
    Options = DiffInstructOptions
    normalize_by_teacher_residual = False
