"""The distillation engine against truths that cannot drift: autograd, quadrature, closed-form Gaussians."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gendiv.kernels import SigmaBinNormalizer, batch_normalized, density_ratio, weighted_difference
from gendiv.models import DiscriminatorHead, MLPDenoiser, OneStepGenerator, discriminator_loss
from gendiv.distill import (DIVERGENCES, DMD, FDistill, StepContext, get_divergence, h_from_f, score_difference_step,
                               surrogate_loss)

ALL_DIVERGENCES = list(DIVERGENCES) + ["alpha:0.5", "alpha:2", "alpha:-1"]


@pytest.mark.parametrize("name", ALL_DIVERGENCES)
def test_h_is_f_second_derivative_times_r_squared(name):
    div = get_divergence(name)
    r = torch.logspace(-2, 1.5, 50, dtype=torch.float64)
    torch.testing.assert_close(div.h(r), h_from_f(div.f)(r), rtol=1e-8, atol=1e-10)
    assert abs(float(div.f(torch.tensor(1.0, dtype=torch.float64)))) < 1e-12  # f(1) = 0


def test_user_supplied_f_and_unknown_names():
    div = get_divergence(lambda r: r * torch.log(r))  # forward KL written by hand
    torch.testing.assert_close(div.h(torch.tensor([0.5, 2.0])), torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="unknown divergence 'jensen-shanon'"):
        get_divergence("jensen-shanon")
    with pytest.raises(ValueError, match="bad α"):
        get_divergence("alpha:x")
    assert get_divergence("alpha:0").name == "reverse_kl" and get_divergence("js").name == "jensen_shannon"


def _gauss_logpdf(x, mean, var):
    return -0.5 * (math.log(2 * math.pi) + np.log(var) + (x - mean) ** 2 / var)


def _f_divergence_quadrature(div, mu, s, sigma):
    """D_f(p_σ‖q_σ) = ∫ q_σ f(p_σ/q_σ) with p = N(0, 1), q = N(μ, s²), by the trapezoid rule in float64."""
    x = torch.linspace(-30, 30, 400_001, dtype=torch.float64)
    lp, lq = _gauss_logpdf(x, 0.0, 1 + sigma**2), _gauss_logpdf(x, mu, s**2 + sigma**2)
    integrand = lq.exp() * div.f((lp - lq).exp())
    return float(torch.trapezoid(integrand, x))


@pytest.mark.parametrize("name", ALL_DIVERGENCES)
def test_f_distill_gradient_equals_finite_difference_of_the_divergence(name):
    """Engine (exact denoisers, exact log r as logits, no normalisers):
    ∇_θ D_f = E_{z,n}[ g · ∂x/∂θ ]/σ² with g = h(r)(Dᶠ − Dᵀ), x = μ + s z, by Gauss–Hermite quadrature."""
    div = get_divergence(name)
    mu, s, sigma = 0.6, 0.8, 0.7
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / weights.sum()
    z, n = (torch.tensor(a, dtype=torch.float64) for a in np.meshgrid(nodes, nodes, indexing="ij"))
    w = torch.tensor(np.outer(weights, weights)).flatten()
    z, n = z.flatten()[:, None], n.flatten()[:, None]
    x = mu + s * z
    x_sigma = x + sigma * n
    var_p, var_q = 1 + sigma**2, s**2 + sigma**2
    d_teacher = x_sigma - sigma**2 * x_sigma / var_p          # x + σ² s_p
    d_fake = x_sigma - sigma**2 * (x_sigma - mu) / var_q      # x + σ² s_q
    log_r = _gauss_logpdf(x_sigma, 0.0, var_p) - _gauss_logpdf(x_sigma, mu, var_q)
    method = FDistill(divergence=name, ratio=dict(logit_clamp=60.0, ratio_min=0.0, ratio_max=math.inf, sigma_bins=0),
                      normalize_weights=False)
    method.normalize_by_teacher_residual = False
    ctx = StepContext(x=x, sigma=torch.full((len(x),), sigma, dtype=torch.float64), x_sigma=x_sigma, cond=None,
                      d_teacher=d_teacher, d_fake=d_fake, logits=log_r.flatten())
    g = method.pseudo_gradient(ctx).double().flatten() / sigma**2
    engine = torch.stack([(w * g).sum(), (w * g * z.flatten()).sum()])
    eps = 1e-4
    fd = torch.tensor([
        (_f_divergence_quadrature(div, mu + eps, s, sigma) - _f_divergence_quadrature(div, mu - eps, s, sigma)) / (2 * eps),
        (_f_divergence_quadrature(div, mu, s + eps, sigma) - _f_divergence_quadrature(div, mu, s - eps, sigma)) / (2 * eps),
    ], dtype=torch.float64)
    torch.testing.assert_close(engine, fd, rtol=2e-3, atol=2e-5)


def test_reverse_kl_is_exactly_dmd():
    g = torch.Generator().manual_seed(0)
    x, dt, df = (torch.randn(6, 3, 4, 4, generator=g) for _ in range(3))
    ctx = StepContext(x=x, sigma=torch.rand(6, generator=g) * 5, x_sigma=x, cond=None, d_teacher=dt, d_fake=df,
                      logits=torch.randn(6, generator=g) * 3)
    # the same formula, so equal to float32 round-off (not bit-exact: the two may reduce in another order)
    torch.testing.assert_close(FDistill("reverse_kl").pseudo_gradient(ctx), DMD().pseudo_gradient(ctx), rtol=1e-6, atol=1e-6)
    # and DMD's g is (Dᶠ − Dᵀ)/mean|x − Dᵀ| as in DMD2's code, written out
    c = (x - dt).abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(DMD().pseudo_gradient(ctx), (df - dt) / (c + 1e-6))


def test_surrogate_puts_g_over_numel_on_x_and_nothing_on_frozen_networks():
    torch.manual_seed(0)
    teacher, fake = MLPDenoiser(dim=2, hidden=16, depth=1), MLPDenoiser(dim=2, hidden=16, depth=1)
    gen = OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1), sigma_init=2.5)
    x = gen(torch.randn(8, 2))
    x.retain_grad()
    ctx = score_difference_step(x, teacher, fake, torch.rand(8) + 0.1)
    loss, _ = DMD().loss_from_context(ctx)
    loss.backward()
    g = DMD().pseudo_gradient(ctx)
    torch.testing.assert_close(x.grad, g / x.numel())
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in fake.parameters())
    assert all(p.grad is not None for p in gen.parameters())
    # the plain formula, too
    y = torch.randn(3, 5, requires_grad=True)
    gg = torch.randn(3, 5)
    surrogate_loss(y, gg).backward()
    torch.testing.assert_close(y.grad, gg / 15)


def test_ratio_estimator_pieces():
    logits = torch.tensor([-20.0, -1.0, 0.0, 2.0, 50.0])
    torch.testing.assert_close(density_ratio(logits), torch.tensor([0.1, math.exp(-1), 1.0, math.exp(2), 20.0]))
    bins = SigmaBinNormalizer(num_bins=2, sigma_min=0.0, sigma_max=2.0, ema=0.5)
    r = torch.tensor([1.0, 3.0, 4.0, 8.0])
    sig = torch.tensor([0.1, 0.2, 1.5, 1.9])
    torch.testing.assert_close(bins(r, sig), torch.tensor([0.5, 1.5, 4 / 6, 8 / 6]), rtol=1e-5, atol=1e-6)
    bins(torch.tensor([4.0]), torch.tensor([0.1]))  # EMA 0.5: mean of bin 0 goes 2 → 3
    torch.testing.assert_close(bins.means, torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(batch_normalized(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))


def test_f_distill_without_discriminator_is_an_error():
    ctx = StepContext(x=torch.zeros(2, 2), sigma=torch.ones(2), x_sigma=torch.zeros(2, 2), cond=None,
                      d_teacher=torch.zeros(2, 2), d_fake=torch.zeros(2, 2), logits=None)
    with pytest.raises(ValueError, match="discriminator supplies the density ratio"):
        FDistill().loss_from_context(ctx)


def test_discriminator_recovers_log_ratio_of_two_gaussians():
    """softplus(ℓ_q) + softplus(−ℓ_p) on noised samples of p = N(0,1), q = N(1, 0.5²): ℓ → log p_σ/q_σ.
    Stated error: E_m|ℓ − log r| < 0.15 under the mixture m = ½(p_σ + q_σ), at σ = 0.3 and 1."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = MLPDenoiser(dim=1, hidden=64, depth=2)
    head = DiscriminatorHead(in_channels=64, spatial=None, hidden=64)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1200)
    for _ in range(1200):
        sigma = torch.tensor([0.3, 1.0])[torch.randint(0, 2, (512,), generator=g)]
        xp = torch.randn(512, 1, generator=g) + sigma[:, None] * torch.randn(512, 1, generator=g)
        xq = 1 + 0.5 * torch.randn(512, 1, generator=g) + sigma[:, None] * torch.randn(512, 1, generator=g)
        _, fp = net(xp, sigma, return_features=True)
        _, fq = net(xq, sigma, return_features=True)
        loss = discriminator_loss(head(fp), head(fq))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for sigma in (0.3, 1.0):
        # evaluate where the discriminator sees data: x from the mixture ½(p_σ + q_σ)
        half = torch.Generator().manual_seed(1)
        x = torch.cat([torch.randn(1000, 1, generator=half) * math.sqrt(1 + sigma**2),
                       1 + torch.randn(1000, 1, generator=half) * math.sqrt(0.25 + sigma**2)])
        with torch.no_grad():
            _, f = net(x, sigma, return_features=True)
            logits = head(f)
        exact = _gauss_logpdf(x.flatten().double(), 0.0, 1 + sigma**2) - _gauss_logpdf(x.flatten().double(), 1.0, 0.25 + sigma**2)
        assert float((logits.double() - exact).abs().mean()) < 0.15


@pytest.mark.parametrize("normalize", [True, False])
def test_compiled_kernel_matches_eager(normalize):
    g = torch.Generator().manual_seed(0)
    x, dt, df = (torch.randn(64, 3, 32, 32, generator=g) for _ in range(3))
    w = torch.rand(64, generator=g) + 0.5
    ref = weighted_difference(x, dt, df, w, normalize=normalize, backend="eager")
    torch.testing.assert_close(weighted_difference(x, dt, df, w, normalize=normalize, backend="compile"), ref,
                               rtol=1e-5, atol=1e-6)


def test_triton_kernel_matches_eager_under_the_interpreter():
    """Triton's interpreter runs the CUDA kernel on the CPU (slowly): same numbers as eager."""
    code = (
        "import torch\n"
        "from gendiv.kernels import weighted_difference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for shape in [(4, 3, 8, 8), (3, 5000)]:\n"
        "    x, dt, df = (torch.randn(*shape, generator=g) for _ in range(3))\n"
        "    w = torch.rand(shape[0], generator=g)\n"
        "    for norm in (True, False):\n"
        "        ref = weighted_difference(x, dt, df, w, normalize=norm)\n"
        "        out = weighted_difference(x, dt, df, w, normalize=norm, backend='triton')\n"
        "        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_triton_kernel_matches_eager_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    x, dt, df = (torch.randn(64, 3, 32, 32, generator=g, device="cuda") for _ in range(3))
    w = torch.rand(64, device="cuda", generator=g)
    torch.testing.assert_close(weighted_difference(x, dt, df, w, backend="triton"), weighted_difference(x, dt, df, w),
                               rtol=1e-5, atol=1e-6)


def test_kernel_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        weighted_difference(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        weighted_difference(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), backend="cuda")
