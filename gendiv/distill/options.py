"""Typed option sections of the distillation config, validated when the config loads (pydantic v2).

Why pydantic and not OmegaConf structured configs: a ``method:`` section is a *discriminated union* keyed by
``name`` (each method accepts exactly its own keys), and σ samplers are one by ``kind``. pydantic v2 validates such
unions natively, with field constraints, cross-field validators and error locations; OmegaConf's structured configs
support unions of primitives only. The rest of gendiv's config stays dataclasses (``training/config.py``), which
hands these sections to ``parse_section``.

Options compose: a method's options are its own keys plus the sections it reads (``gan``, ``ratio``,
``regression``), and no section is inherited by a method that ignores it.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..space import sample_sigma
from .divergences import get_divergence


class Options(BaseModel):
    """A config section: unknown keys and non-finite numbers are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True,
                              arbitrary_types_allowed=True)


# keys that moved when options became composed sections: the error for the old key names the new one
MOVED_KEYS = {"gan_weight_gen": "gan.weight_gen", "gan_weight_disc": "gan.weight_disc",
              "regression_weight": "regression.weight", "regression_pairs": "regression.pairs",
              "discriminator": "gan.discriminator",
              **{k: f"ratio.{k}" for k in ("logit_clamp", "ratio_min", "ratio_max", "sigma_bins", "bin_ema",
                                           "bin_spacing", "sigma_min", "sigma_max")}}


def format_validation_error(err: ValidationError, where: str, kind: str = "", model: type | None = None) -> str:
    """pydantic's report → one line naming the key: ``method.gan.weight_gen: must be ≥ 0, got -1``."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union")))]
    if kind and loc and loc[0] == kind:  # the union's branch name (e.g. 'sid') is not a key
        loc = loc[1:]
    key = ".".join([where, *loc]) if where else ".".join(loc)
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = f"; did you mean {where}.{MOVED_KEYS[loc[-1]]}?" if len(loc) == 1 and loc[-1] in MOVED_KEYS \
            and MOVED_KEYS[loc[-1]].split(".")[0] in allowed else ""
        return f"{key}: unknown option{f' for {kind}' if kind else ''}{hint}; allowed: {sorted(allowed)}"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if first["type"] in ("missing", "value_error") or isinstance(value, dict) else f", got {value!r}"
    return f"{key}: {msg}{shown}"


def _fields_at(model, path: list[str]) -> list[str]:
    """Field names of ``model``'s nested section at ``path`` (for error messages)."""
    for name in path:
        field = (model.model_fields if model is not None else {}).get(name)
        model = field.annotation if field is not None else None
    return [k for k in (model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {})
            if k not in ("name", "kind")]


class TaggedSection:
    """A section chosen by one tag key (``name`` for methods, ``kind`` for σ samplers).

    ``training/config.py`` parses fields of such types with ``parse_section``; a command-line override that changes
    the tag resets the section to that choice's defaults (``method.name=sid`` gives SiD's defaults, not f-distill's
    options under SiD's name).
    """

    section_tag: ClassVar[str]

    @classmethod
    def choices(cls) -> dict[str, type]:
        raise NotImplementedError

    @classmethod
    def parse_section(cls, value: Any, where: str):
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, dict):
            raise _config_error(f"{where}: expected a mapping, got {value!r}")
        tag = value.get(cls.section_tag)
        choices = cls.choices()
        if tag not in choices:
            raise _config_error(f"{where}.{cls.section_tag}: {'missing' if tag is None else f'unknown {tag!r}'}; "
                                f"choose one of {sorted(choices)}")
        adapter = TypeAdapter(Annotated[Union[tuple(choices.values())], Field(discriminator=cls.section_tag)])
        try:
            return adapter.validate_python(value)
        except ValidationError as e:
            raise _config_error(format_validation_error(e, where, kind=tag, model=choices[tag])) from None


def _config_error(message: str):
    from ..training.config import ConfigError  # the user-error type of gendiv's configs

    return ConfigError(message)


# -------------------------------------------------------------------------------------------------
# σ samplers: one type per kind
# -------------------------------------------------------------------------------------------------
class SigmaSampler(Options, TaggedSection):
    section_tag: ClassVar[str] = "kind"
    kind: str

    @classmethod
    def choices(cls) -> dict[str, type]:
        return {c.model_fields["kind"].default: c for c in (AutoSigma, LogNormalSigma, KarrasIndexSigma,
                                                             LogUniformSigma)}

    def sampler_kwargs(self) -> dict:
        return self.model_dump(exclude={"kind"})

    def draw(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return sample_sigma(self.kind, batch, generator=generator, **self.sampler_kwargs()).to(device)


class AutoSigma(SigmaSampler):
    """The method's own default (``DistillMethod.default_sigma_generator`` / ``default_sigma_fake``)."""

    kind: Literal["auto"] = "auto"

    def draw(self, batch, generator=None, device=None):
        raise RuntimeError("σ sampler 'auto' must be resolved to the method's default before training")


class LogNormalSigma(SigmaSampler):
    """EDM's training σ: ln σ ~ N(p_mean, p_std²)."""

    kind: Literal["lognormal"] = "lognormal"
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0)


class KarrasIndexSigma(SigmaSampler):
    """σ at a uniform index of a Karras grid of ``num_points`` (DMD2: [20, 980] of 1000)."""

    kind: Literal["karras_index"] = "karras_index"
    min_index: int = Field(20, ge=0)
    max_index: int = 980
    num_points: int = Field(1000, ge=2)

    @model_validator(mode="after")
    def _range(self):
        if not 0 <= self.min_index <= self.max_index < self.num_points:
            raise ValueError(f"need 0 ≤ min_index ≤ max_index < num_points, got {self.min_index}, {self.max_index}, "
                             f"{self.num_points}")
        return self


class LogUniformSigma(SigmaSampler):
    """σ uniform in log σ over [sigma_min, sigma_max]."""

    kind: Literal["log_uniform"] = "log_uniform"
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = 80.0

    @model_validator(mode="after")
    def _range(self):
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"need sigma_max > sigma_min, got {self.sigma_min}, {self.sigma_max}")
        return self


# -------------------------------------------------------------------------------------------------
# Sections methods compose
# -------------------------------------------------------------------------------------------------
KernelBackend = Literal["auto", "eager", "compile", "triton", "cpp"]


class GANSection(Options):
    """GAN term: a discriminator head on a denoiser's features (DMD2 §4.2, docs/methods.md §1)."""

    weight_gen: float = Field(3e-3, ge=0)    # generator: λ_G·softplus(−ℓ_fake) (DMD2 3e-3)
    weight_disc: float = Field(1e-2, ge=0)   # discriminator loss added to the fake-score loss (DMD2 1e-2)
    # whose features the head reads: the fake score network's (DMD2; its loss trains the fake encoder too) or the
    # frozen, unguided teacher's conditional pass (LADD-style; only the head learns)
    features: Literal["fake", "teacher"] = "fake"
    # the bottleneck only, or every UNet encoder level plus the bottleneck, one head each, logits summed
    layers: Literal["bottleneck", "all"] = "bottleneck"


class EncoderGANSection(GANSection):
    """SiDA's GAN term: the discriminator is the fake network's encoder (no parameters) or a small head."""

    weight_gen: float = Field(1e-2, ge=0)
    discriminator: Literal["encoder", "head"] = "encoder"

    @model_validator(mode="after")
    def _encoder_reads_the_fake_bottleneck(self):
        if self.discriminator == "encoder" and (self.features, self.layers) != ("fake", "bottleneck"):
            raise ValueError("discriminator 'encoder' is the fake network's own bottleneck (no head): features="
                             f"{self.features!r}, layers={self.layers!r} need discriminator=head")
        return self


class RegressionSection(Options):
    """DMD's regression to teacher ODE outputs on fixed noise (MSE here; LPIPS in the paper)."""

    weight: float = Field(0.0, ge=0)
    pairs: int = Field(256, ge=1)


class RatioSection(Options):
    """How r = p_σ/q_σ is read from the discriminator logit (f-distill's estimator, docs/methods.md §2)."""

    logit_clamp: float = Field(10.0, gt=0)
    ratio_min: float = Field(0.1, ge=0)
    ratio_max: float = Field(20.0, allow_inf_nan=True)
    sigma_bins: int = Field(10, ge=0)          # 0: no σ-bin normalisation of r
    bin_ema: float = Field(0.0, ge=0, lt=1)
    bin_spacing: Literal["linear", "log"] = "linear"   # NVIDIA's equal width in σ | equal width in log σ
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)

    @model_validator(mode="after")
    def _range(self):
        if not self.ratio_max > self.ratio_min:
            raise ValueError(f"need 0 ≤ ratio_min < ratio_max, got {self.ratio_min}, {self.ratio_max}")
        return self

    def check_divergence(self, spec) -> None:
        """h(r) = f''(r)r² must be finite and ≥ 0 on the ratio range the estimator can produce."""
        div = get_divergence(spec)
        lo = max(self.ratio_min, math.exp(-self.logit_clamp))
        hi = min(self.ratio_max, math.exp(self.logit_clamp))
        probe = torch.logspace(math.log10(lo), math.log10(hi), 41, dtype=torch.float64)
        h = div.h(probe)
        bad = ~torch.isfinite(h) | (h < -1e-6)  # f convex ⇔ h ≥ 0 (tolerance for autograd round-off)
        if bad.any():
            raise ValueError(f"divergence {div.name!r}: h(r) = f''(r)r² is not finite and ≥ 0 on the ratio range "
                             f"[{lo:.3g}, {hi:.3g}] (at r = {probe[bad][0].item():.3g}); narrow ratio.ratio_min/"
                             "ratio_max/logit_clamp or choose another divergence")


Divergence = Union[str, Callable]


def check_divergence_name(value):
    try:
        get_divergence(value)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None
    return value


# -------------------------------------------------------------------------------------------------
# The method section
# -------------------------------------------------------------------------------------------------
class MethodOptions(Options, TaggedSection):
    """Base of every method's options; subclasses set ``name: Literal[...]`` (the registry key)."""

    section_tag: ClassVar[str] = "name"
    name: str

    @classmethod
    def choices(cls) -> dict[str, type]:
        from .contract import METHODS

        return {name: method.Options for name, method in METHODS.items()}


class KernelOptions(BaseModel):
    kernel_backend: KernelBackend = "auto"   # the score-difference kernel: auto | eager | compile | triton | cpp


class DivergenceOptions(BaseModel):
    """An f-divergence read through a density-ratio estimator (f-distill, Uni-Instruct)."""

    divergence: Divergence = "jensen_shannon"   # a name, short name or alpha:<a>; a callable f in Python
    normalize_weights: bool = True              # ĥ = h / batch mean of h
    ratio: RatioSection = Field(default_factory=RatioSection)

    @field_validator("divergence")
    @classmethod
    def _known(cls, value):
        return check_divergence_name(value)

    @model_validator(mode="after")
    def _h_finite_on_ratio_range(self):
        self.ratio.check_divergence(self.divergence)
        return self
