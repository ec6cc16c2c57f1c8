"""DMD and DMD2 (docs/methods.md §1): g = (Dᶠ − Dᵀ)/mean|x − Dᵀ|; DMD adds a regression to teacher ODE pairs,
DMD2 a GAN head on the fake network's bottleneck and two-time-scale updates (5 fake : 1 student)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..sampling import sample_heun
from ..space import karras_sigmas
from .contract import MethodSetup, StepDraws
from .options import GANSection, KernelOptions, RegressionSection
from .score_difference import ScoreDifferenceMethod, ScoreDifferenceOptions


class DMDOptions(ScoreDifferenceOptions, KernelOptions):
    name: Literal["dmd"] = "dmd"
    regression: RegressionSection = Field(default_factory=RegressionSection)


class DMD2Options(ScoreDifferenceOptions, KernelOptions):
    name: Literal["dmd2"] = "dmd2"
    fake_updates_per_generator_update: int = Field(5, ge=1)
    regression: RegressionSection = Field(default_factory=RegressionSection)
    gan: GANSection = Field(default_factory=GANSection)


@torch.no_grad()
def teacher_ode_pairs(setup: MethodSetup, n: int, seed_offset: int = 123):
    """(z, x, cond): n latents and the teacher's Heun ODE outputs from σ_max·z on its own Karras grid."""
    g = torch.Generator().manual_seed(setup.seed + seed_offset)
    cond = setup.draw_condition(n, g)
    z = torch.randn(setup.sample_shape(n), generator=g)
    sigmas = karras_sigmas(setup.teacher_steps, device=setup.device)
    x = sample_heun(setup.teacher, z.to(setup.device) * sigmas[0], sigmas,
                    cond=None if cond is None else cond.to(setup.device))
    return z, x, cond


class DMD(ScoreDifferenceMethod):
    """DMD: g = (Dᶠ − Dᵀ)/mean|x − Dᵀ|, optionally + a regression to teacher ODE pairs (MSE instead of LPIPS)."""

    name = "dmd"
    Options = DMDOptions

    def prepare(self, setup: MethodSetup):
        super().prepare(setup)
        reg = self.options.regression
        self.regression_pairs = teacher_ode_pairs(setup, reg.pairs) if reg.weight else None

    def add_extra_terms(self, loss, nets, x, draws: StepDraws, metrics: dict):
        if getattr(self, "regression_pairs", None) is None:
            return loss
        z, target, pcond = self.regression_pairs
        idx = torch.randint(0, len(z), (x.shape[0],), generator=draws.rng)
        pc = None if pcond is None else pcond.index(idx).to(x.device)
        reg = torch.nn.functional.mse_loss(nets["generator"](z[idx].to(x.device), pc).float(), target[idx])
        metrics["regression_loss"] = float(reg.detach())
        return loss + self.options.regression.weight * reg


class DMD2(DMD):
    """DMD2: DMD + a GAN head on the fake network's bottleneck, two-time-scale updates (5 fake : 1 student)."""

    name = "dmd2"
    Options = DMD2Options
    uses_discriminator = True
