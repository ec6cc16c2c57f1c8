"""f-distill (docs/methods.md §2): g = ĥ(r)·(Dᶠ − Dᵀ)/mean|x − Dᵀ| with r = exp(ℓ) from the discriminator,
r normalised by its running mean per σ bin, h = f''(r)r², ĥ = h / batch mean of h. DMD2 plus one override."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..kernels import SigmaBinNormalizer, batch_normalized, density_ratio, resolve_backend
from ..kernels.fused_weighting import fdistill_weighting_compiled, fdistill_weighting_triton
from ..kernels.native_cpu import fdistill_weighting_cpp
from .divergences import DIVERGENCES, get_divergence
from .dmd import DMD2
from .losses import StepContext
from .options import DivergenceOptions, GANSection, KernelOptions, RegressionSection
from .score_difference import ScoreDifferenceOptions


class FDistillOptions(ScoreDifferenceOptions, KernelOptions, DivergenceOptions):
    name: Literal["f_distill"] = "f_distill"
    fake_updates_per_generator_update: int = Field(5, ge=1)
    regression: RegressionSection = Field(default_factory=RegressionSection)
    gan: GANSection = Field(default_factory=lambda: GANSection(weight_gen=1e-3))


class RatioWeights:
    """r from the discriminator logit (never from a loss value), σ-bin and batch normalisation: f-distill's
    estimator, shared with Uni-Instruct."""

    def init_ratio(self):
        o = self.options
        self.divergence = get_divergence(o.divergence)
        r = o.ratio
        self.bins = SigmaBinNormalizer(r.sigma_bins, r.sigma_min, r.sigma_max, r.bin_ema, spacing=r.bin_spacing) \
            if r.sigma_bins else None

    def ratio(self, ctx: StepContext) -> torch.Tensor:
        if ctx.logits is None:
            raise ValueError(f"{self.name} needs discriminator logits: the discriminator supplies the density ratio r")
        o = self.options.ratio
        r = density_ratio(ctx.logits, o.logit_clamp, o.ratio_min, o.ratio_max)
        if self.bins is not None:
            self.bins.to(r.device)
            r = self.bins(r, ctx.sigma)
        return r

    def state_modules(self) -> dict:
        return {"ratio_bins": self.bins} if self.bins is not None else {}

    @property
    def label(self) -> str:
        return f"{self.name} ({self.divergence.name})"


class FDistill(RatioWeights, DMD2):
    """f-distill: DMD2 with the per-sample weight ĥ(r)."""

    name = "f_distill"
    Options = FDistillOptions

    def __init__(self, divergence=None, options=None, **kw):
        if isinstance(divergence, FDistillOptions):
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
        o, r, bins = self.options, self.options.ratio, self.bins
        if bins is not None and bins.means.device != ctx.x.device:  # Module.to costs ~15 µs even as a no-op
            bins.to(ctx.x.device)
        h = self.divergence.name if backend in ("cpp", "triton") else self.divergence.h
        fused = {"compile": fdistill_weighting_compiled, "triton": fdistill_weighting_triton,
                 "cpp": fdistill_weighting_cpp}[backend]
        g, means, seen = fused(
            ctx.x.detach(), ctx.d_teacher, ctx.d_fake, ctx.logits, ctx.sigma,
            bins.edges if bins is not None else None, bins.means if bins is not None else None,
            bins.seen if bins is not None else None, h, r.logit_clamp, r.ratio_min, r.ratio_max,
            r.bin_ema, bins is not None, o.normalize_weights, self.normalize_by_teacher_residual)
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
