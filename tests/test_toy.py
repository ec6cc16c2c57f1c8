
import pytest
import torch

from gendiv.condition import Condition
from gendiv.sampling import sample
from gendiv.toy import (DISTRIBUTIONS, AnalyticDenoiser, GaussianMixture, checkerboard, conditional2d, exact_metrics,
                        get_distribution, mode_recall, ring8_imbalanced, sliced_wasserstein2)


@pytest.mark.parametrize("name", ["ring8_imbalanced", "checkerboard", "conditional2d"])
@pytest.mark.parametrize("sigma", [0.05, 0.4, 2.0])
def test_denoiser_equals_monte_carlo_posterior_mean(name, sigma):
    """E[x₀ | x] = Σ x₀ⁱ N(x; x₀ⁱ, σ²) / Σ N(x; x₀ⁱ, σ²) with x₀ⁱ ~ p (self-normalised importance sampling)."""
    dist = get_distribution(name)
    g = torch.Generator().manual_seed(0)
    x0 = dist.sample(400_000, g).double()
    x = dist.sample(6, g).double() + sigma * torch.randn(6, 2, generator=g, dtype=torch.float64)
    logw = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    ess = 1 / (w**2).sum(1)
    assert ess.min() > 200, "test setup: too few effective samples"
    tol = 4 * sigma / ess.sqrt().min() + 1e-3
    torch.testing.assert_close(dist.denoise(x, sigma), mc, atol=float(tol), rtol=0)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("sigma", [0.01, 0.3, 3.0])
def test_score_equals_autograd_of_log_density(name, sigma):
    dist = get_distribution(name)
    g = torch.Generator().manual_seed(1)
    x = (dist.sample(16, g).double() + sigma * torch.randn(16, dist.dim, generator=g, dtype=torch.float64)).requires_grad_()
    cond = Condition(class_labels=dist.sample_labels(16, g)) if dist.num_classes else None
    (grad,) = torch.autograd.grad(dist.log_prob(x, sigma, cond).sum(), x)
    torch.testing.assert_close(dist.score(x.detach(), sigma, cond), grad, atol=1e-6 / sigma, rtol=1e-6)


def test_log_density_integrates_to_one():
    for dist in (ring8_imbalanced(), checkerboard()):
        lin = torch.linspace(-3, 3, 601, dtype=torch.float64)
        xx, yy = torch.meshgrid(lin, lin, indexing="ij")
        pts = torch.stack([xx.flatten(), yy.flatten()], 1)
        mass = dist.log_prob(pts, 0.1).exp().sum() * (lin[1] - lin[0]) ** 2
        assert abs(float(mass) - 1) < 1e-3


def test_conditional_mixture_restricts_components():
    dist = conditional2d()
    x = dist.sample(500, torch.Generator().manual_seed(0), class_labels=torch.full((500,), 2))
    comp = dist.responsibilities(x).argmax(1)
    assert set(comp.tolist()) <= {2, 6}
    # the null flag gives the unconditional mixture
    cond = Condition(class_labels=torch.full((3,), 2), drop=torch.ones(3, dtype=torch.bool))
    pts = torch.randn(3, 2)
    torch.testing.assert_close(dist.log_prob(pts, 0.3, cond), dist.log_prob(pts, 0.3))
    with pytest.raises(ValueError, match="out of range"):
        dist.log_prob(pts, 0.3, Condition(class_labels=torch.tensor([0, 1, 7])))


def test_metrics_against_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 4, generator=g)
    assert sliced_wasserstein2(x, x) == 0.0
    shift = torch.tensor([0.3, -0.4, 0.0, 1.2])
    # E_θ (θ·c)² = |c|²/d for uniform unit directions θ
    assert abs(sliced_wasserstein2(x, x + shift, num_projections=4000) - float(shift.norm()) / 2) < 0.02
    dist = ring8_imbalanced()
    no_small_mode = dist.sample(4000, g)
    no_small_mode = no_small_mode[dist.responsibilities(no_small_mode).argmax(1) != 0]
    rec = mode_recall(dist, no_small_mode)
    assert rec[0] == 0 and rec[1:].min() > 0.85


@pytest.mark.parametrize("name,bound", [("ring8_imbalanced", 0.03), ("checkerboard", 0.03), ("mixture16d", 0.03),
                                        ("conditional2d", 0.03)])
def test_35_step_sampler_reproduces_each_distribution(name, bound):
    """Heun, 18 steps (35 NFE) with the exact denoiser: sliced-W₂ to fresh exact samples is within `bound` of the
    exact-vs-exact baseline, and every mode is recalled."""
    dist = get_distribution(name)
    g = torch.Generator().manual_seed(3)
    n = 4000
    labels = dist.sample_labels(n, g) if dist.num_classes else None
    cond = None if labels is None else Condition(class_labels=labels)
    x = sample(AnalyticDenoiser(dist), (n, dist.dim), num_steps=18, cond=cond, generator=g)
    ref = dist.sample(n, g, class_labels=labels)
    baseline = sliced_wasserstein2(dist.sample(n, g, class_labels=labels), ref)
    m = exact_metrics(dist, x, ref)
    assert m["sliced_w2"] < baseline + bound, (m, baseline)
    assert m["min_mode_recall"] > 0.8
    assert m["log_likelihood"] > float(dist.log_prob(ref, dist.metric_sigma).mean()) - 0.5 * dist.dim / 2


def test_bad_inputs():
    dist = ring8_imbalanced()
    with pytest.raises(ValueError, match="expects points"):
        dist.denoise(torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="unknown toy distribution"):
        get_distribution("swissroll")
    with pytest.raises(ValueError, match="variances"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="sigma must"):
        AnalyticDenoiser(dist)(torch.zeros(2, 2), torch.ones(3))
