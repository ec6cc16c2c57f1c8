"""The distillation contract: what a method declares and what the trainer runs (docs/adding_a_method.md).

A method declares
  * ``Options``       its typed ``method:`` section (``options.py``), validated by ``name`` when the config loads;
  * ``networks``      the networks it trains besides the student (``"generator"``), each with the optimiser
                      ``optim.lr_<name>``; networks it keeps frozen (an EMA target) it holds itself and lists in
                      ``state_modules`` so checkpoints carry them;
  * ``updates``       the optimisation updates it can run, each naming the networks its loss trains;
  * ``schedule``      which updates step s runs, in order;
  * ``loss``          the loss of one update, from the networks and the step's lazy draws;
  * ``after_update``  what follows an update (EMA targets, σ-bin statistics).
The trainer owns optimisers (one per named network), precision, accelerate, the student's EMA, checkpoints and
logs. It runs what the method schedules and never branches on a method's name. Subclasses register themselves by
``name`` when their class is defined, and ``gendiv.distill`` imports every module of the package, so a new family
file is registered without being listed anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

import torch
from torch import nn

from ..condition import Condition
from .options import LogNormalSigma, MethodOptions, SigmaSampler

METHODS: dict[str, type["DistillMethod"]] = {}
STUDENT = "generator"   # the student's network name (its optimiser: optim.lr_generator)


@dataclass(frozen=True)
class Update:
    """One optimisation update: its name and the networks whose parameters its loss trains."""

    name: str
    trains: tuple[str, ...]


@dataclass
class MethodSetup:
    """Set-up facts a method may use once, before training (e.g. to precompute teacher regression pairs)."""

    teacher: nn.Module | None                                   # the (guided) teacher denoiser, frozen
    sample_shape: Callable[[int], tuple]
    draw_condition: Callable[[int, torch.Generator], Condition | None]  # n conditions as training draws them (CPU)
    seed: int
    device: torch.device
    teacher_steps: int
    is_image: bool = False


class NetworkFactory:
    """Builds a method's networks; provided by the trainer (it knows the teacher, the data and the student)."""

    student: nn.Module                                          # the student, unwrapped

    def score_network(self, scalar: str | None = None) -> nn.Module:
        """A denoiser like the teacher (a trainable copy of it, or new), with an extra scalar condition if named."""
        raise NotImplementedError

    def discriminator_head(self, on: nn.Module, layers: str = "bottleneck") -> nn.Module:
        """A head on ``on``'s bottleneck features, or one head per encoder level and the bottleneck (``"all"``)."""
        raise NotImplementedError

    def frozen_teacher(self) -> nn.Module:
        """The unguided teacher denoiser, frozen (a discriminator may read its features); raise if there is none."""
        raise NotImplementedError


@dataclass
class StepDraws:
    """Everything random an update may use, drawn lazily from the trainer's seeded generator (exact resume), on
    the training device. One object per training step: ``cache`` holds what later updates of the same step reuse
    (e.g. the generator update's samples, for DMD2's sample reuse)."""

    rng: torch.Generator
    device: torch.device
    step: int                                                   # completed steps before this one
    batch_size: int
    teacher: nn.Module | None                                   # the (guided) teacher denoiser, frozen
    condition: Callable[[int], Condition | None]                # n training conditions (labels or prompts)
    latents: Callable[[int], torch.Tensor]                      # n student latents z ~ N(0, I)
    sigma: Callable[[str, int], torch.Tensor]                   # ("generator" | "fake", n) → σ [n]
    real: Callable[[int], tuple[torch.Tensor, Condition | None]]
    cache: dict = field(default_factory=dict)

    def randn_like(self, t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=self.rng).to(t.device)

    def uniform(self, n: int, dtype=torch.float32) -> torch.Tensor:
        return torch.rand(n, generator=self.rng, dtype=dtype).to(self.device)


class DistillMethod:
    """Base of every method. Subclasses set ``name`` and ``Options`` and implement ``updates``, ``schedule`` and
    ``loss``; the defaults below say what the trainer assumes when a method is silent."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = True          # False: trains from data alone (SMT, iCT); teacher.source=none
    default_sigma_init: ClassVar[float] = 80.0    # the one-step student G(z) = D(σ_init z, σ_init)
    default_sigma_generator: ClassVar[SigmaSampler] = LogNormalSigma()
    default_sigma_fake: ClassVar[SigmaSampler] = LogNormalSigma()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("name"):
            if cls.name in METHODS and METHODS[cls.name].__qualname__ != cls.__qualname__:
                raise TypeError(f"two distillation methods are named {cls.name!r}: {METHODS[cls.name]} and {cls}")
            METHODS[cls.name] = cls

    def __init__(self, options: MethodOptions | None = None, **kwargs):
        if options is None:
            options = self.Options(name=self.name, **kwargs)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        elif not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    # -- what the method declares -------------------------------------------------------------------
    def needs_real_data(self) -> bool:
        """Real samples feed a discriminator, or are the only signal without a teacher."""
        return not self.needs_teacher

    def networks(self, factory: NetworkFactory) -> dict[str, nn.Module]:
        """Trainable networks besides the student, by name (each stepped with ``optim.lr_<name>``)."""
        return {}

    def build_networks(self, factory: NetworkFactory) -> dict[str, nn.Module]:
        """``networks``, remembering their names (``network_names``) for ``updates``; what the trainer calls."""
        nets = self.networks(factory)
        if STUDENT in nets:
            raise ValueError(f"method {self.name}: {STUDENT!r} is the student's name; name the network otherwise")
        self.network_names = tuple(nets)
        return nets

    def updates(self) -> tuple[Update, ...]:
        raise NotImplementedError

    def schedule(self, step: int) -> tuple[str, ...]:
        """Names of the updates step ``step`` (completed steps before it) runs, in order."""
        raise NotImplementedError

    def loss(self, update: str, nets: Mapping[str, nn.Module], draws: StepDraws) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def after_update(self, update: str, nets: Mapping[str, nn.Module], draws: StepDraws) -> None:
        """Called after an update's optimiser steps (EMA targets, running statistics)."""

    def prepare(self, setup: MethodSetup) -> None:
        """Called once before training."""

    def state_modules(self) -> dict[str, nn.Module]:
        """Modules whose state belongs in checkpoints besides the networks (ratio bins, EMA targets)."""
        return {}

    def check_run(self, steps: int) -> None:
        """Raise ValueError when the run's length cannot give this method's schedule (called at config load)."""

    def student_config(self) -> dict:
        """Extra config the exported student records (e.g. a few-step student's σ grid)."""
        return {}

    student_nfe: ClassVar[int] = 1                # network evaluations per sample of the trained student

    def sample(self, student: nn.Module, z: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        """Samples of the trained student from latents z (evaluation); one step by default."""
        return student(z, cond)

    @property
    def label(self) -> str:
        """Name shown in plots and tables."""
        return self.name


def method_class(name: str) -> type[DistillMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(name: str, **kwargs) -> DistillMethod:
    return method_class(name)(**kwargs)
