"""Few-step students (docs/adding_a_method.md): the student's k passes x ← G(x̂ + σ_j n, σ_j) on a σ grid
[σ_init, σ₁, …, σ_{k−1}], and DMD / DMD2 trained on them by backward simulation (DMD2, Yin et al. 2024, §4.5):
each student update runs the student's own chain without gradient up to a random pass j, then pass j with
gradient, and that output is distribution-matched (so the student learns on the states it will meet at sampling).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..space import karras_sigmas
from .contract import STUDENT, StepDraws
from .dmd import DMD, DMD2, DMD2Options, DMDOptions
from .options import Options


class FewStepSection(Options):
    """The σ grid of a k-pass student: pass 0 is G(z) at σ_init, pass j re-noises the last x̂₀ to σ_j."""

    steps: int = Field(1, ge=1)                       # k, network passes per sample
    sigmas: list[float] | None = None                 # σ₁ > … > σ_{k−1} > 0; None: the inner points of a Karras
                                                      # grid of k + 1 points from σ_init to 0.002 (ρ = 7)

    @model_validator(mode="after")
    def _grid(self):
        s = self.sigmas
        if s is not None and (len(s) != self.steps - 1 or any(v <= 0 for v in s)
                              or any(a <= b for a, b in zip(s, s[1:]))):
            raise ValueError(f"sigmas must be {self.steps - 1} positive decreasing values (one per pass after the "
                             f"first), got {s}")
        return self

    def grid(self, sigma_init: float) -> list[float]:
        """[σ_init, σ₁, …, σ_{k−1}]."""
        rest = self.sigmas if self.sigmas is not None else \
            karras_sigmas(self.steps + 1, sigma_max=sigma_init, append_zero=False)[1:-1].tolist()
        if rest and rest[0] >= sigma_init:
            raise ValueError(f"few_step.sigmas must lie below the student's σ_init = {sigma_init}, got {rest}")
        return [float(sigma_init), *map(float, rest)]


class FourStepSection(FewStepSection):
    """A few-step section whose default is DMD2's four passes."""

    steps: int = Field(4, ge=1)


def renoise(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def student_passes(student, z, cond, sigmas: list[float], passes: int, generator=None) -> torch.Tensor:
    """x̂₀ after the first ``passes`` passes: G(z), then x ← G(x + σ_j n, σ_j) for j = 1 … passes − 1."""
    x = student(z, cond)
    for s in sigmas[1:passes]:
        x = student(renoise(x, s, generator), cond, sigma=s)
    return x


def backward_simulation(student, z, cond, sigmas: list[float], draws: StepDraws) -> tuple[torch.Tensor, int]:
    """(x, j): pass j ~ U{0..k−1} with gradient, on the student's own state after passes 0..j−1 (no gradient)."""
    j = int(torch.randint(len(sigmas), (1,), generator=draws.rng))
    if j == 0:
        return student(z, cond), 0
    with torch.no_grad():
        x = student_passes(student, z, cond, sigmas, j, draws.rng)
    return student(renoise(x, sigmas[j], draws.rng), cond, sigma=sigmas[j]), j


class MultiStepSampling:
    """Mixin for methods whose students sample in ``options.few_step.steps`` passes: evaluation (``sample``), NFE,
    and the σ grid recorded in the exported student's config (``sampling_sigmas``, read by ``FewStepPipeline``)."""

    def sigma_grid(self, student) -> list[float]:
        return self.options.few_step.grid(getattr(student, "module", student).config.sigma_init)

    @property
    def student_nfe(self) -> int:
        return self.options.few_step.steps

    def record_grid(self, student) -> None:
        student.register_to_config(sampling_sigmas=self.sigma_grid(student))

    def student_config(self) -> dict:
        return {"sampling_sigmas": self.options.few_step.grid(self.default_sigma_init)}

    @torch.no_grad()
    def sample(self, student, z, cond, generator: torch.Generator | None = None):
        """k passes; the re-noising draws come from ``generator`` (a fixed seed when None: evaluation repeats)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        sigmas = self.sigma_grid(student)
        return student_passes(student, z, cond, sigmas, len(sigmas), generator)


class FewStepDistributionMatching(MultiStepSampling):
    """A score-difference method whose student is a k-pass chain trained by backward simulation; the fake score
    learns the distribution of whichever pass was trained (DMD2's multi-step recipe)."""

    def networks(self, factory):
        self.record_grid(factory.student)
        return super().networks(factory)

    def student_samples(self, nets, draws: StepDraws, grad: bool):
        if not grad and getattr(self, "reuse_samples", False) and "student_samples" in draws.cache:
            return draws.cache["student_samples"]
        cond = draws.condition(draws.batch_size)
        z = draws.latents(draws.batch_size)
        with torch.set_grad_enabled(grad):
            x, _ = backward_simulation(nets[STUDENT], z, cond, self.sigma_grid(nets[STUDENT]), draws)
        x = x.float()
        if grad:
            draws.cache["student_samples"] = (x.detach(), cond)
        return x, cond

    @property
    def label(self) -> str:
        return f"{self.name} ({self.options.few_step.steps} steps)"


class DMDFewStepOptions(DMDOptions):
    name: Literal["dmd_few_step"] = "dmd_few_step"
    few_step: FourStepSection = Field(default_factory=FourStepSection)


class DMD2FewStepOptions(DMD2Options):
    name: Literal["dmd2_few_step"] = "dmd2_few_step"
    few_step: FourStepSection = Field(default_factory=FourStepSection)


class DMDFewStep(FewStepDistributionMatching, DMD):
    """DMD with a k-pass student trained by backward simulation."""

    name = "dmd_few_step"
    Options = DMDFewStepOptions


class DMD2FewStep(FewStepDistributionMatching, DMD2):
    """DMD2's multi-step student: k passes, backward simulation, GAN head and 5:1 updates as in DMD2."""

    name = "dmd2_few_step"
    Options = DMD2FewStepOptions
