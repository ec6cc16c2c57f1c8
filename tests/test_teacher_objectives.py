"""Teacher objectives (issue 25): scheduled pseudo-Huber, input perturbation (DDPM-IP), Laplace/Cauchy log-SNR σ
samplers, each against a truth: the L2 limit, closed-form optima, distribution tests, and robustness to outliers."""
import json
import math

import pytest
import torch
from scipy import stats

from gendiv.models import MLPDenoiser
from gendiv.objectives import denoising_loss
from gendiv.objectives.denoising_variants import (input_perturbation_denoising_loss, pseudo_huber,
                                                  pseudo_huber_denoising_loss, scheduled_huber_c)
from gendiv.sampling import sample
from gendiv.space import sample_sigma
from gendiv.toy import get_distribution, sliced_wasserstein2

F64 = torch.float64


def batch(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = get_distribution("ring8_imbalanced").sample(n, g)
    return x0, torch.exp(torch.randn(n, generator=g) - 1), torch.randn(n, 2, generator=g)


# ------------------------------------------------------------------------------------------------------------
# pseudo-Huber
# ------------------------------------------------------------------------------------------------------------
def test_pseudo_huber_is_the_formula_with_bounded_influence():
    r = torch.linspace(-50, 50, 1001, dtype=F64, requires_grad=True)
    c = torch.tensor(0.3, dtype=F64)
    rho = pseudo_huber(r**2, c)
    torch.testing.assert_close(rho, 2 * c * ((r**2 + c**2).sqrt() - c))
    grad = torch.autograd.grad(rho.sum(), r)[0]
    assert grad.abs().max() < 2 * c  # an outlier's pull is bounded by 2c (L2's grows like 2r)
    torch.testing.assert_close(grad, 2 * c * r / (r**2 + c**2).sqrt())
    tiny = pseudo_huber(torch.tensor(1e-30, dtype=F64), c)  # no cancellation where r² ≪ c²
    assert tiny == pytest.approx(1e-30, rel=1e-12)


def test_scheduled_c():
    sigma = torch.tensor([0.0, 1.0, 1e6])
    torch.testing.assert_close(scheduled_huber_c(sigma, 0.1), torch.tensor([1.0, 0.1 + 0.9 / 4, 0.1]))


def test_pseudo_huber_tends_to_the_edm_loss_as_c_grows():
    """ρ_c(r) = r² − r⁴/(4c²) + …: at c₀ = 1e4 the loss is the EDM loss to float32 round-off (same σ and noise)."""
    x0, sigma, noise = batch()
    den = MLPDenoiser(dim=2, hidden=16, depth=1)
    l2 = denoising_loss(den, x0, sigma=sigma, noise=noise, reduce=False)
    huber = pseudo_huber_denoising_loss(den, x0, c0=1e4, sigma=sigma, noise=noise, reduce=False)
    torch.testing.assert_close(huber, l2, rtol=1e-5, atol=0)
    assert (pseudo_huber_denoising_loss(den, x0, c0=0.1, sigma=sigma, noise=noise, reduce=False) < l2).all()
    with pytest.raises(ValueError, match="c0 must be > 0"):
        pseudo_huber_denoising_loss(den, x0, c0=0.0)


def train(loss_fn, dist, steps=800, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = MLPDenoiser(dim=2, hidden=96, depth=3)
    ema = MLPDenoiser(dim=2, hidden=96, depth=3)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(steps):
        loss = loss_fn(model, dist.sample(256, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 0.01)
    return ema


def test_pseudo_huber_recovers_the_clean_ring_where_l2_does_not():
    """The same MLP and budget on ring8 with 10% corrupted samples: the L2 teacher reproduces the corruption, the
    pseudo-Huber teacher generates markedly fewer samples off the clean ring and is closer to it in sliced W₂."""
    corrupted, clean = get_distribution("ring8_outliers"), get_distribution("ring8_imbalanced")
    ref = clean.sample(2000, torch.Generator().manual_seed(9))
    result = {}
    for name, fn in {"l2": lambda m, x, g: denoising_loss(m, x, generator=g),
                     "huber": lambda m, x, g: pseudo_huber_denoising_loss(m, x, c0=0.1, generator=g)}.items():
        teacher = train(fn, corrupted)
        with torch.no_grad():
            x = sample(teacher, (2000, 2), num_steps=18, generator=torch.Generator().manual_seed(1))
        off_ring = float((clean.log_prob(x, 0.0) < -10).double().mean())
        result[name] = (off_ring, sliced_wasserstein2(x, ref))
    assert result["huber"][0] < 0.6 * result["l2"][0], result
    assert result["huber"][1] < result["l2"][1], result


# ------------------------------------------------------------------------------------------------------------
# input perturbation
# ------------------------------------------------------------------------------------------------------------
def test_input_perturbation_at_zero_gamma_is_the_edm_loss():
    x0, sigma, noise = batch()
    den = MLPDenoiser(dim=2, hidden=16, depth=1)
    torch.testing.assert_close(input_perturbation_denoising_loss(den, x0, gamma=0.0, sigma=sigma, noise=noise),
                               denoising_loss(den, x0, sigma=sigma, noise=noise))
    with pytest.raises(ValueError, match="gamma must be ≥ 0"):
        input_perturbation_denoising_loss(den, x0, gamma=-0.1)


def test_input_perturbation_optimum_is_the_denoiser_at_the_inflated_sigma():
    """Data N(0, v), D(x) = a·x: the perturbed input is x₀ + σ√(1 + γ²)·n', so the loss is minimised at
    a* = v/(v + σ²(1 + γ²)), not the EDM optimum v/(v + σ²). The loss is quadratic in a: three evaluations on the
    same draws give its minimiser exactly."""
    v, sigma, gamma, n = 1.0, 1.0, 0.5, 400_000
    x0 = math.sqrt(v) * torch.randn(n, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    s = torch.full((n,), sigma, dtype=F64)

    def loss(a):
        return float(input_perturbation_denoising_loss(lambda x, _s, _c: a * x, x0, gamma=gamma, sigma=s,
                                                       generator=torch.Generator().manual_seed(3)))

    l0, l1, l2 = loss(0.0), loss(0.5), loss(1.0)
    a_hat = 0.5 - (l2 - l0) / (4 * (l0 - 2 * l1 + l2))  # vertex of the parabola through a = 0, ½, 1
    assert a_hat == pytest.approx(v / (v + sigma**2 * (1 + gamma**2)), rel=1e-2)
    assert abs(a_hat - v / (v + sigma**2)) > 0.04


# ------------------------------------------------------------------------------------------------------------
# log-SNR σ samplers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, dist", [("laplace", stats.laplace(0.0, 0.5)), ("cauchy", stats.cauchy(0.0, 1.0))])
def test_log_snr_samplers_match_their_law(kind, dist):
    sigma = sample_sigma(kind, 50_000, generator=torch.Generator().manual_seed(4), sigma_min=1e-30, sigma_max=1e30)
    log_snr = (-2 * sigma.double().log()).numpy()
    assert stats.kstest(log_snr, dist.cdf).pvalue > 1e-3
    clamped = sample_sigma(kind, 50_000, generator=torch.Generator().manual_seed(4))
    assert float(clamped.min()) >= 0.002 * (1 - 1e-6) and float(clamped.max()) <= 80 * (1 + 1e-6)


def test_existing_sigma_samplers_unchanged():
    """The samplers that existed before are bit-identical to their formulas."""
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(sample_sigma("lognormal", 64, generator=g()),
                               (-1.2 + 1.2 * torch.randn(64, generator=g())).exp(), rtol=0, atol=0)
    u = torch.rand(64, generator=g())
    torch.testing.assert_close(sample_sigma("log_uniform", 64, generator=g()),
                               (math.log(0.002) + u * (math.log(80.0) - math.log(0.002))).exp(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, extra", [
    ("teacher_ring_outliers_pseudo_huber.yaml", []),
    ("teacher_ring_input_perturbation.yaml", []),
    ("teacher_digits_laplace.yaml", ["data.image_size=8", "model.block_out_channels=[16, 32]", "run.batch_size=8"]),
])
def test_configs_train_from_the_command_line(tmp_path, config, extra):
    from gendiv.cli import main

    main(["train", "--config", f"configs/{config}", f"run.output_dir={tmp_path}", "run.steps=3", "run.progress=false",
          "eval.num_samples=100", "eval.num_steps=4", *extra])
    assert (tmp_path / "pipeline").is_dir()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(math.isfinite(v) for v in json.loads(lines[0]).values() if isinstance(v, float))


def test_bad_teacher_loss_config():
    from gendiv.training import TrainConfig, load_config
    from gendiv.training.config import ConfigError

    with pytest.raises(ConfigError, match="teacher_loss.huber_c0 must be > 0"):
        load_config(TrainConfig, "configs/teacher_ring_outliers_pseudo_huber.yaml", ["teacher_loss.huber_c0=0"])
