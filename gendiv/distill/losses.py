"""The shared step and losses every distillation family uses (docs/methods.md §1–2).

Score-difference step: x = G(z) → x_σ = x + σn → Dᵀ(x_σ) (guided), Dᶠ(x_σ), discriminator logits ℓ(x_σ) →
per-sample weight w → g = w·(Dᶠ − Dᵀ)/c → surrogate ½‖x − sg(x − g)‖² (+ GAN term). Denoising losses
(``objectives/denoising.py``) and GAN losses (``models/discriminator.py``) are re-exported so a method file
imports its losses from one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..condition import Condition
from ..models.discriminator import discriminator_loss, generator_gan_loss
from ..objectives.denoising import denoising_loss, weighted_denoising_error
from ..space import append_dims


@dataclass
class StepContext:
    """Everything a score-difference method may weigh, evaluated once per generator update."""

    x: torch.Tensor                      # student samples (carry the student's graph)
    sigma: torch.Tensor                  # [B]
    x_sigma: torch.Tensor                # x + σ·n
    cond: Condition | None
    d_teacher: torch.Tensor              # Dᵀ(x_σ): no grad, or a graph to x_σ with ``input_grad``
    d_fake: torch.Tensor                 # Dᶠ(x_σ): likewise
    logits: torch.Tensor | None = None   # discriminator logits at x_σ (graph to x when the GAN term is on)


@dataclass(frozen=True)
class FeatureSource:
    """Where the discriminator head reads its features (the ``gan.features`` and ``gan.layers`` options).

    ``network`` None: the fake score network, in the same pass as its denoising (DMD2); the discriminator's loss
    then trains the fake encoder too. Otherwise a frozen network (the unguided teacher, as LADD does), evaluated in
    a pass of its own: its weights get no gradient, and the generator's GAN gradient flows through it to x_σ.
    ``layers``: "bottleneck" or "all" (every encoder level and the bottleneck, ``UNetDenoiser.feature_taps``).
    """

    network: nn.Module | None = None
    layers: str = "bottleneck"

    def of_frozen(self, x_sigma, sigma, cond, grad: bool):
        """The frozen network's features at x_σ; with ``grad`` they keep the graph to x_σ (never to its weights)."""
        with torch.set_grad_enabled(grad):
            _, feats = self.network(x_sigma if grad else x_sigma.detach(), sigma, cond, return_features=self.layers)
        return feats


def feature_rows(feats, rows: slice):
    """Rows of a feature map, or of each map in a list of them (``layers="all"``)."""
    return [f[rows] for f in feats] if isinstance(feats, list) else feats[rows]


def detach_features(feats):
    return [f.detach() for f in feats] if isinstance(feats, list) else feats.detach()


class EncoderDiscriminator(nn.Module):
    """SiDA's discriminator: the channel mean of the fake network's bottleneck, one logit per sample.

    It has no parameters of its own; training it trains the fake network's encoder (SiDA, docs/methods.md §1).
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.float().flatten(1).mean(1)


def surrogate_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½·mean((x − sg(x − g))²): ∂L/∂x = g/numel(x), and no gradient reaches teacher or fake networks."""
    return 0.5 * torch.nn.functional.mse_loss(x.float(), (x.detach().float() - g.float()))


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Per sample √(‖x − y‖² + c²) − c (iCT, Song & Dhariwal 2023, §3.3): L2-like near 0, L1-like far away."""
    sq = (x.float() - y.float()).flatten(1).pow(2).sum(1)
    return sq / ((sq + c * c).sqrt() + c)  # = √(sq + c²) − c without cancellation when sq ≪ c² (float32)


def score_difference_step(x, teacher, fake, sigma, cond=None, discriminator=None, gan_grad: bool = False,
                          generator=None, input_grad: bool = False,
                          features: FeatureSource = FeatureSource()) -> StepContext:
    """Noise student samples and evaluate teacher, fake score and (optionally) discriminator at the same x_σ.

    ``teacher`` may be a guided denoiser; ``discriminator`` is a head on the features ``features`` names (the fake
    network's bottleneck by default). With ``gan_grad`` the feature pass keeps the graph from x_σ to the logits; with
    ``input_grad`` (score-identity methods) both denoisings keep their graph to x_σ. Network weights are frozen by
    the trainer during the student update, so only the student learns from this step.
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
    if discriminator is None or features.network is not None:
        with torch.set_grad_enabled(input_grad):
            d_fake = fake(x_sigma if input_grad else x_sigma.detach(), sigma, cond)
        if discriminator is not None:
            feats = features.of_frozen(x_sigma, sigma, cond, grad=gan_grad)
            with torch.set_grad_enabled(gan_grad):
                logits = discriminator(feats)
    else:
        with torch.set_grad_enabled(input_grad or gan_grad):
            d_fake, feats = fake(fake_in, sigma, cond, return_features=features.layers)
            logits = discriminator(feats if gan_grad else detach_features(feats))
        if not input_grad:
            d_fake = d_fake.detach()
    if d_fake.shape != x.shape:
        raise ValueError(f"fake score output shape {tuple(d_fake.shape)} does not match generator output {tuple(x.shape)}")
    return StepContext(x=x, sigma=sigma, x_sigma=x_sigma, cond=cond, d_teacher=d_teacher, d_fake=d_fake, logits=logits)


def fake_score_and_discriminator_loss(fake, head, x_fake, cond, sigma, noise, x_real, real_cond, sigma_real,
                                      sigma_gan, noise_gan, noise_real, gan_weight_disc: float,
                                      features: FeatureSource = FeatureSource()):
    """The fake score's EDM denoising loss on detached student samples, plus the discriminator's logistic loss
    (generated at σ_gan vs real at σ_real). On the fake network's features: ONE pass of the fake network, so DDP
    sees one forward per backward; on a frozen network's: the fake pass denoises only, and the frozen pass (no
    graph) feeds the head, so the fake score's gradient is its denoising loss's alone."""
    bs, nd = x_fake.shape[0], x_fake.ndim
    x_noisy = x_fake + append_dims(sigma, nd) * noise
    x_disc = torch.cat([x_fake + append_dims(sigma_gan, nd) * noise_gan,
                        x_real + append_dims(sigma_real, nd) * noise_real])
    sigma_disc = torch.cat([sigma_gan, sigma_real])
    if features.network is None:
        all_cond = None if cond is None else Condition.cat([cond, cond, real_cond])
        denoised, feats = fake(torch.cat([x_noisy, x_disc]), torch.cat([sigma, sigma_disc]), all_cond,
                               return_features=features.layers)
        denoised, feats = denoised[:bs], feature_rows(feats, slice(bs, None))
    else:
        denoised = fake(x_noisy, sigma, cond)
        feats = features.of_frozen(x_disc, sigma_disc, None if cond is None else Condition.cat([cond, real_cond]),
                                   grad=False)
    dsm = weighted_denoising_error(denoised, x_fake, sigma).mean()
    logits = head(feats)  # [generated at σ_gan; real at σ_real]
    d_loss = discriminator_loss(logits[bs:], logits[:bs])
    acc = ((logits[bs:] > 0).float().mean() + (logits[:bs] < 0).float().mean()) / 2
    metrics = {"fake_loss": float(dsm.detach()), "disc_loss": float(d_loss.detach()), "disc_acc": float(acc.detach())}
    return dsm + gan_weight_disc * d_loss, metrics


__all__ = ["StepContext", "FeatureSource", "feature_rows", "detach_features", "EncoderDiscriminator", "surrogate_loss",
           "pseudo_huber", "score_difference_step",
           "fake_score_and_discriminator_loss", "denoising_loss", "weighted_denoising_error", "discriminator_loss",
           "generator_gan_loss"]
