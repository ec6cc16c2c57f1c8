"""Classifier guidance (Dhariwal & Nichol 2021; docs/methods.md §10, docs/guidance.md).

Bayes' rule on the noised marginals, ∇log p_σ(x | c) = ∇log p_σ(x) + ∇log p_σ(c | x), is in denoiser form (Tweedie,
D = x + σ²∇log p_σ):

    D(x, σ | c) = D(x, σ) + σ²·∇_x log p(c | x, σ),

so guiding with s gives D_s = D + s·σ²·∇log p(c | x, σ): s = 1 is the exact conditional denoiser when the classifier is
exact (tests/test_guidance_gradients.py, float64), s > 1 sharpens like CFG, s = 0 is the unconditional model. The
classifier sees the noised x_σ and σ: ``classifier(x, sigma) -> logits [B, num_classes]``.
:class:`NoiseConditionalClassifier` is one gendiv trains with :func:`classifier_loss` (cross-entropy on noised data,
the σ distribution of the denoiser's training); any differentiable module with that signature works.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..condition import Condition, as_condition
from ..space import SIGMA_DATA, append_dims, as_sigma_batch, sample_sigma, sigma_dtype
from .base import GuidedDenoiser, null_condition


def input_gradient(fn, x: torch.Tensor) -> torch.Tensor:
    """∇_x Σ_batch fn(x) at a detached copy of x (works inside a pipeline's no_grad)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return grad


def condition_for(denoiser: nn.Module, cond: Condition | None) -> Condition | None:
    """``cond`` as a denoiser can take it: without class labels for an unconditional one (the labels are the guide's
    target only), unchanged otherwise."""
    if cond is None or denoiser.config.get("num_classes") is not None:
        return cond
    return Condition(scalars=dict(cond.scalars)) if cond.scalars else None


def classifier_classes(classifier) -> int | None:
    """The number of classes a classifier module declares (``config.num_classes`` or ``num_classes``), if any."""
    config = getattr(classifier, "config", None)
    n = config.get("num_classes") if isinstance(config, dict) else getattr(config, "num_classes", None)
    return n if n is not None else getattr(classifier, "num_classes", None)


def label_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(c | ·) of each sample's label from unnormalised logits [B, C]."""
    return F.log_softmax(logits, dim=1).gather(1, labels.to(logits.device).long()[:, None])[:, 0]


class NoiseConditionalClassifier(ModelMixin, ConfigMixin):
    """p(c | x_σ, σ) as a residual SiLU MLP on the flattened input scaled by c_in = 1/√(σ² + σ_d²) (EDM's input scaling,
    docs/methods.md §0) and a Fourier embedding of c_noise = ln(σ)/4. Small enough for toy data and 8×8 digits."""

    @register_to_config
    def __init__(self, input_shape: list | tuple = (2,), num_classes: int = 2, hidden: int = 128, depth: int = 2,
                 embed_dim: int = 32, sigma_data: float = SIGMA_DATA):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes ≥ 2, got {num_classes}")
        dim = math.prod(input_shape)
        self.register_buffer("freqs", torch.randn(embed_dim // 2, generator=torch.Generator().manual_seed(0)) * 4.0)
        self.inp = nn.Linear(dim + embed_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(self.config.input_shape):
            shape = ", ".join(map(str, self.config.input_shape))
            raise ValueError(f"NoiseConditionalClassifier expects inputs [B, {shape}], got {tuple(x.shape)}")
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=torch.float32).clamp_min(1e-12)
        c_in = 1 / (sigma**2 + self.config.sigma_data**2).sqrt()
        args = (sigma.log() / 4)[:, None] * self.freqs[None] * 2 * math.pi
        h = torch.cat([x.flatten(1).to(self.dtype) * c_in[:, None].to(self.dtype), args.sin(), args.cos()], 1)
        h = self.inp(h.to(self.dtype))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def classifier_loss(classifier, x0: torch.Tensor, labels: torch.Tensor, sigma_sampler: str = "lognormal",
                    generator=None, **sampler_kwargs) -> torch.Tensor:
    """Cross-entropy of ``classifier(x₀ + σn, σ)`` against the labels, σ from the denoiser's training distribution."""
    sigma = sample_sigma(sigma_sampler, x0.shape[0], generator=generator, device=x0.device, **sampler_kwargs)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return F.cross_entropy(classifier(x0 + append_dims(sigma, x0.ndim) * noise, sigma), labels.to(x0.device))


class ClassifierGuidedDenoiser(GuidedDenoiser):
    """D_s = D(x, σ) + s·σ²·∇_x log p(c | x, σ), with D the unconditional prediction: the model itself if it is
    unconditional, its null class if conditional, or its conditional prediction with ``conditional_base=True``
    (Dhariwal & Nichol's conditional model plus classifier)."""

    config_fields = ("guidance_scale", "guidance_rescale", "conditional_base")

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0, conditional_base: bool = False):
        super().__init__(denoiser, guidance_scale, guidance_rescale)
        if conditional_base and denoiser.config.get("num_classes") is None:
            raise ValueError("conditional_base=True needs a class-conditional denoiser; this one is unconditional")
        self.classifier, self.conditional_base = classifier, bool(conditional_base)
        self.target_classes = classifier_classes(classifier)  # labels a pipeline accepts for an unconditional model

    def is_off(self, cond) -> bool:
        return False  # s = 1 is the (Bayes) conditional model, not the network alone: always add the gradient

    def base_condition(self, cond: Condition | None, batch: int, device) -> Condition | None:
        if self.conditional_base or self.config.get("num_classes") is None:
            return condition_for(self.denoiser, cond)
        return null_condition(cond, batch, device, self.config.get("scalar_names") or ())

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        cond = as_condition(cond)
        if cond is None or cond.class_labels is None:
            raise ValueError("classifier guidance needs class labels (the class whose log-probability it ascends)")
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device, dtype=sigma_dtype(x, sigma))
        out = self.denoiser(x, sigma, self.base_condition(cond, x.shape[0], x.device), return_features=return_features)
        base, feats = out if return_features else (out, None)
        grad = input_gradient(lambda v: label_log_prob(self.classifier(v, sigma), cond.class_labels), x)
        guided = self.combine(base + append_dims(sigma**2, x.ndim).to(base.dtype) * grad.to(base.dtype), base)
        return (guided, feats) if return_features else guided
