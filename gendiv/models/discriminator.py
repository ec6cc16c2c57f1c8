"""Discriminator heads on a denoiser's features: its bottleneck (DMD2 puts one head on the fake score network), or
every encoder level with one head each (``MultiScaleDiscriminatorHead``).

Trained with softplus(ℓ_fake) + softplus(−ℓ_real) on noised samples, the optimum is ℓ = log p_σ/q_σ, which is
how f-distill gets its density ratio r = exp(ℓ).
"""
from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn


class DiscriminatorHead(ModelMixin, ConfigMixin):
    """Args:
        in_channels: channels of the feature map (or width of a feature vector).
        spatial: feature map side length; None for vector features (MLP denoisers).
        hidden: width of the head.
    Image features: [Conv3×3 stride 2 → GroupNorm → SiLU] down to 4×4 or less, then spatial mean and a linear
    layer. Vector features: a two-layer SiLU MLP. Returns one logit per sample, shape [B].
    """

    @register_to_config
    def __init__(self, in_channels: int = 128, spatial: int | None = None, hidden: int = 128):
        super().__init__()
        if spatial is None:
            self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 1))
        else:
            layers, ch, size = [], in_channels, spatial
            while size > 4:
                layers += [nn.Conv2d(ch, hidden, 3, stride=2, padding=1), nn.GroupNorm(min(32, hidden // 4) or 1, hidden),
                           nn.SiLU()]
                ch, size = hidden, (size + 1) // 2
            layers += [nn.Conv2d(ch, hidden, 3, padding=1), nn.SiLU()]
            self.conv = nn.Sequential(*layers)
            self.net = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.spatial is None:
            if features.ndim != 2:
                raise ValueError(f"vector discriminator head expects [B, {self.config.in_channels}], got {tuple(features.shape)}")
            return self.net(features.float()).squeeze(1)
        if features.ndim != 4 or features.shape[1] != self.config.in_channels:
            raise ValueError(f"discriminator head expects [B, {self.config.in_channels}, h, w], got {tuple(features.shape)}")
        return self.net(self.conv(features.float()).mean((2, 3))).squeeze(1)

    @classmethod
    def sized_for(cls, feats: torch.Tensor, hidden: int) -> "DiscriminatorHead":
        return cls(in_channels=feats.shape[1], spatial=None if feats.ndim == 2 else feats.shape[-1], hidden=hidden)

    @classmethod
    def for_denoiser(cls, denoiser, example_x: torch.Tensor, hidden: int = 128, layers: str = "bottleneck"):
        """A head sized for ``denoiser``'s bottleneck (``layers="bottleneck"``), or one head per encoder level and
        the bottleneck (``"all"``: a ``MultiScaleDiscriminatorHead``), found by one forward pass on ``example_x``."""
        with torch.no_grad():
            _, feats = denoiser(example_x[:1], 1.0, _example_cond(denoiser), return_features=layers)
        if feats is None:
            raise ValueError(f"{type(denoiser).__name__} exposes no features for a discriminator head")
        if layers == "all":
            return MultiScaleDiscriminatorHead(in_channels=[f.shape[1] for f in feats],
                                               spatial=[f.shape[-1] for f in feats], hidden=hidden)
        return cls.sized_for(feats, hidden)


class MultiScaleDiscriminatorHead(ModelMixin, ConfigMixin):
    """One ``DiscriminatorHead`` per feature map (a UNet's encoder levels and bottleneck); ℓ = Σ_k ℓ_k.

    The sum, not the mean: ℓ is trained as one logistic model, so at the optimum it is log p_σ/q_σ whichever way the
    heads are combined; summing reads each level as adding its own log-likelihood-ratio evidence, and keeps every
    head's gradient the one a single head would get (a mean would divide it by the number of levels).

    Args:
        in_channels, spatial: channels and side length of each feature map, shallow to deep.
        hidden: width of every head.
    """

    @register_to_config
    def __init__(self, in_channels: list = (128,), spatial: list = (4,), hidden: int = 128):
        super().__init__()
        if len(in_channels) != len(spatial) or not in_channels:
            raise ValueError(f"need one spatial size per feature map, got in_channels={list(in_channels)}, "
                             f"spatial={list(spatial)}")
        self.heads = nn.ModuleList(DiscriminatorHead(c, s, hidden) for c, s in zip(in_channels, spatial))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.heads):
            raise ValueError(f"multi-scale discriminator expects {len(self.heads)} feature maps, got {len(features)}")
        return torch.stack([head(f) for head, f in zip(self.heads, features)]).sum(0)


def _example_cond(denoiser):
    from ..condition import Condition

    cfg = denoiser.config
    if cfg.num_classes is None and not cfg.scalar_names:
        return None
    return Condition(class_labels=None if cfg.num_classes is None else torch.zeros(1, dtype=torch.long),
                     scalars={n: torch.zeros(1) for n in cfg.scalar_names or []})


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss: mean softplus(ℓ_fake) + mean softplus(−ℓ_real)."""
    return nn.functional.softplus(logits_fake).mean() + nn.functional.softplus(-logits_real).mean()


def generator_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side: mean softplus(−ℓ_fake)."""
    return nn.functional.softplus(-logits_fake).mean()
