"""Score-of-Mixture (SMT, SMD) against closed forms: α-skew JS by quadrature, its gradient by finite differences,
the mixture-score identity, the optimal mixture denoiser, DMD at α = 1, and a trained amortized network."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gendiv import MLPDenoiser
from gendiv.kernels import weighted_difference
from gendiv.distill import SMD, mixture_denoising_loss, sample_alpha, smt_pseudo_gradient
from gendiv.distill import StepContext
from gendiv.distill.score_of_mixture import alpha_condition, mixture_weight
from gendiv.toy import GaussianMixture
from gendiv.training import ConfigError, DistillConfig, distill, load_config

GRID = torch.linspace(-25, 25, 200001, dtype=torch.float64)


def _logn(x, m, v):
    return -0.5 * (math.log(2 * math.pi) + math.log(v) + (x - m) ** 2 / v)


def _skew_js(alpha, m, s, sigma=0.0):
    """D^(α)(q‖p) = (1/α)KL(q‖m_α) + (1/(1−α))KL(p‖m_α) for p = N(0,1), q = N(m, s²), noised by σ, by quadrature."""
    lp, lq = _logn(GRID, 0.0, 1 + sigma**2), _logn(GRID, m, s**2 + sigma**2)
    lm = torch.logaddexp(math.log(alpha) + lp, math.log1p(-alpha) + lq)
    kl_q = torch.trapezoid(lq.exp() * (lq - lm), GRID)
    kl_p = torch.trapezoid(lp.exp() * (lp - lm), GRID)
    return float(kl_q / alpha + kl_p / (1 - alpha))


def _kl(la, lb):
    return float(torch.trapezoid(la.exp() * (la - lb), GRID))


def test_alpha_skew_js_limits_and_half():
    m, s = 0.7, 1.4
    lp, lq = _logn(GRID, 0.0, 1.0), _logn(GRID, m, s**2)
    assert _skew_js(1e-6, m, s) == pytest.approx(_kl(lp, lq), rel=1e-4)          # α → 0: KL(p‖q)
    assert _skew_js(1 - 1e-6, m, s) == pytest.approx(_kl(lq, lp), rel=1e-4)      # α → 1: KL(q‖p)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    assert _skew_js(0.5, m, s) == pytest.approx(4 * (0.5 * _kl(lp, lm) + 0.5 * _kl(lq, lm)), rel=1e-9)


def _exact_denoisers(x_sigma, m, s, sigma):
    """(D_p, D_q, log r) at x_σ for p = N(0,1), q = N(m, s²)."""
    vp, vq = 1 + sigma**2, s**2 + sigma**2
    d_p = x_sigma / vp
    d_q = m + s**2 / vq * (x_sigma - m)
    log_r = _logn(x_sigma, 0.0, vp) - _logn(x_sigma, m, vq)
    return d_p, d_q, log_r


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_smt_gradient_equals_finite_differences_of_alpha_skew_js(alpha):
    """The generator step (1/α)(s_0 − s_α) (Prop. 3.1), built by smt_pseudo_gradient from exact mixture denoisers,
    is the gradient of D^(α)(q_σ‖p_σ) in both parameters of q = N(m, s²)."""
    m0, s0, sigma = 0.3, 1.2, 0.5
    z1, w1 = np.polynomial.hermite_e.hermegauss(80)
    z, n = (torch.tensor(a).flatten() for a in np.meshgrid(z1, z1, indexing="ij"))
    w = torch.tensor(np.outer(w1, w1) / (2 * math.pi)).flatten()
    x = m0 + s0 * z
    x_sigma = x + sigma * n
    d_p, d_q, log_r = _exact_denoisers(x_sigma, m0, s0, sigma)
    weight = mixture_weight(log_r, torch.full_like(log_r, alpha))
    f_alpha = weight * d_p + (1 - weight) * d_q  # the mixture denoiser (tested below)
    g = smt_pseudo_gradient(x[:, None], d_q[:, None], f_alpha[:, None], d_p[:, None],
                            alpha=torch.full((len(x),), alpha, dtype=torch.float64), adaptive=False).flatten()
    engine = torch.stack([(w * g).sum(), (w * g * z).sum()]) / sigma**2  # ∂x/∂m = 1, ∂x/∂s = z
    eps = 1e-4
    fd = torch.tensor([(_skew_js(alpha, m0 + eps, s0, sigma) - _skew_js(alpha, m0 - eps, s0, sigma)) / (2 * eps),
                       (_skew_js(alpha, m0, s0 + eps, sigma) - _skew_js(alpha, m0, s0 - eps, sigma)) / (2 * eps)],
                      dtype=torch.float64)
    torch.testing.assert_close(engine, fd, rtol=1e-5, atol=1e-7)


def test_mixture_score_identity_and_the_optimal_mixture_denoiser():
    """s_α = D s_p + (1−D) s_q, D = sigmoid(log r + logit α), against the score of αp_σ + (1−α)q_σ by autograd; and
    the pointwise minimiser of the mixture loss (the mixture's posterior mean, by quadrature over x₀) is D·Dᵀ + (1−D)Dᶠ."""
    m, s, sigma = 0.8, 0.6, 0.7
    x = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)
    for alpha in (0.0, 0.2, 0.5, 0.9, 1.0):
        lp, lq = _logn(x, 0.0, 1 + sigma**2), _logn(x, m, s**2 + sigma**2)
        parts = [t for t, a in ((math.log(alpha) + lp if alpha > 0 else None, alpha),
                                (math.log1p(-alpha) + lq if alpha < 1 else None, 1 - alpha)) if t is not None]
        lmix = torch.logsumexp(torch.stack(parts), 0)
        (score_mix,) = torch.autograd.grad(lmix.sum(), x)
        d_p, d_q, log_r = _exact_denoisers(x.detach(), m, s, sigma)
        weight = mixture_weight(log_r, torch.full_like(log_r, alpha))
        assert torch.isfinite(weight).all()
        s_p, s_q = (d_p - x.detach()) / sigma**2, (d_q - x.detach()) / sigma**2
        torch.testing.assert_close(weight * s_p + (1 - weight) * s_q, score_mix, rtol=1e-10, atol=1e-12)
        # posterior mean of x₀ under α p + (1−α) q given x_σ, by quadrature over x₀: the minimiser of the mixture loss
        x0 = torch.linspace(-12, 12, 40001, dtype=torch.float64)
        prior = alpha * _logn(x0, 0.0, 1.0).exp() + (1 - alpha) * _logn(x0, m, s**2).exp()
        lik = _logn(x.detach()[:, None], x0[None], sigma**2).exp()
        post_mean = torch.trapezoid(prior * lik * x0, x0, dim=1) / torch.trapezoid(prior * lik, x0, dim=1)
        torch.testing.assert_close(weight * d_p + (1 - weight) * d_q, post_mean, rtol=1e-7, atol=1e-8)


def test_mixture_loss_is_minimised_by_the_mixture_denoiser_and_handles_the_ends():
    g = torch.Generator().manual_seed(0)
    x_real, x_fake = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    d_real, d_fake = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    sigma = torch.rand(5, generator=g) + 0.1
    lam = 1 / sigma**2 + 4
    for a in (0.0, 1.0):
        loss = mixture_denoising_loss(d_real, x_real, d_fake, x_fake, sigma, torch.full((5,), a))
        want = lam * ((d_real - x_real) ** 2 if a else (d_fake - x_fake) ** 2).mean(1)
        torch.testing.assert_close(loss, want)
    alphas = sample_alpha(40000, torch.Generator().manual_seed(0), zero_mass=0.25)
    assert alphas.min() == 0 and alphas.max() == 1
    assert float((alphas == 0).float().mean()) == pytest.approx(0.25 + 0.75 / 1001, abs=0.01)
    gen_alpha = sample_alpha(10000, torch.Generator().manual_seed(1), low=500)
    assert gen_alpha.min() >= 0.5 and gen_alpha.max() <= 1


def test_adaptive_smt_step_and_smd_step_are_dmd_at_alpha_one():
    g = torch.Generator().manual_seed(0)
    x, d_teacher, d_fake = (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    dmd = weighted_difference(x, d_teacher, d_fake, normalize=True)
    smt = smt_pseudo_gradient(x, d_fake, d_teacher, d_teacher)  # f_1 = f_α = Dᵀ, f_0 = Dᶠ
    torch.testing.assert_close(smt, dmd, rtol=1e-5, atol=1e-8)
    ctx = StepContext(x=x, sigma=torch.ones(6), x_sigma=x, cond=None, d_teacher=d_teacher, d_fake=d_fake,
                      logits=torch.randn(6, generator=g, dtype=torch.float64) * 3)
    x_req = x.clone().requires_grad_()
    ctx.x = x_req
    loss, _ = SMD(kernel_backend="eager", gan={"weight_gen": 0.0}).mixture_loss(ctx, torch.ones(6, dtype=torch.float64))
    loss.backward()
    torch.testing.assert_close(x_req.grad.double() * x.numel(), dmd, rtol=1e-5, atol=1e-6)  # surrogate in fp32


def test_trained_amortized_network_matches_the_exact_mixture_denoisers():
    """With a fixed 'generator' distribution q and data p (2-D Gaussian mixtures), the amortized network trained by
    the mixture loss alone reaches the exact denoisers: data at α = 1, generator at α = 0, mixture in between.
    Measured where the mixture α p_σ + (1−α) q_σ has its mass (elsewhere the loss says nothing about f).
    Stated error: RMS ≤ 0.16 (data scale ~1, modes of width 0.05–0.08) at σ ∈ {0.3, 0.7} and α ∈ {0, ½, 1}, and at
    most 0.4× the error of the untrained network at each point (0.23–0.52)."""
    torch.manual_seed(0)
    p = GaussianMixture([[1.0, 0.0], [-1.0, 0.0]], 0.05)
    q = GaussianMixture([[0.0, 1.0], [0.0, -0.8]], 0.08)
    net = MLPDenoiser(dim=2, hidden=64, depth=2, scalar_names=["alpha"])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    batch = 256

    def rms_errors():
        errors = {}
        for sigma in (0.3, 0.7):
            for a in (0.0, 0.5, 1.0):
                n_p = int(round(400 * a))
                x0 = torch.cat([p.sample(n_p, g), q.sample(400 - n_p, g)])
                x = x0 + sigma * torch.randn(400, 2, generator=g)
                d_p, d_q = p.denoise(x.double(), sigma), q.denoise(x.double(), sigma)
                log_r = p.log_prob(x, sigma) - q.log_prob(x, sigma)
                weight = mixture_weight(log_r, torch.full_like(log_r, a))[:, None]
                exact = weight * d_p + (1 - weight) * d_q
                with torch.no_grad():
                    got = net(x, torch.full((400,), sigma), alpha_condition(None, torch.full((400,), a))).double()
                errors[(sigma, a)] = float((got - exact).pow(2).sum(1).mean().sqrt())
        return errors

    untrained = rms_errors()
    for _ in range(1200):
        xr, xf = p.sample(batch, g), q.sample(batch, g)
        sigma = torch.exp(torch.randn(batch, generator=g) * 0.5 - 0.8)
        alpha = sample_alpha(batch, g, zero_mass=0.25)
        noise_r, noise_f = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g)
        out = net(torch.cat([xr + sigma[:, None] * noise_r, xf + sigma[:, None] * noise_f]), torch.cat([sigma, sigma]),
                  alpha_condition(None, torch.cat([alpha, alpha])))
        loss = mixture_denoising_loss(out[:batch], xr, out[batch:], xf, sigma, alpha).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    errors = rms_errors()
    assert max(errors.values()) < 0.16, errors  # measured: 0.05–0.14 after 1,200 steps
    assert all(errors[k] < 0.4 * untrained[k] for k in errors), (untrained, errors)


# -------------------------------------------------------------------------------------------------
FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=32", "method.fake_warmup_steps=2", "eval.num_samples=100",
        "eval.teacher_steps=3", "student.model.hidden=32", "student.model.depth=1", "student.discriminator_hidden=16",
        "run.steps=8", "method.fake_updates_per_generator_update=2"]


def test_smt_trains_from_data_alone_and_smd_distils(tmp_path):
    summary = distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path / 'smt'}", "method.name=smt",
                                                        "teacher.source=none", "data.source=toy:ring8_imbalanced", *FAST]))
    result = json.loads((tmp_path / "smt" / "eval_final.json").read_text())
    assert "teacher" not in result and np.isfinite(summary["student/sliced_w2"])
    rows = [json.loads(line) for line in (tmp_path / "smt" / "metrics.jsonl").read_text().splitlines()]
    assert any("distill_loss" in r for r in rows) and any("alpha_mean" in r for r in rows)
    distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path / 'smd'}", "method.name=smd", *FAST]))
    rows = [json.loads(line) for line in (tmp_path / "smd" / "metrics.jsonl").read_text().splitlines()]
    assert any("gan_gen_loss" in r for r in rows) and any("disc_loss" in r for r in rows)


def test_smt_on_images_from_data_and_smd_from_a_trained_teacher(tmp_path):
    from gendiv import OneStepPipeline
    from gendiv.training import TrainConfig, train

    repo = Path(__file__).resolve().parents[1]
    tiny = ["data.image_size=8", "run.batch_size=8", "run.steps=4", "method.fake_warmup_steps=1", "eval.num_samples=8",
            "run.sample_every=0"]
    distill(load_config(DistillConfig, repo / "configs" / "distill_smt_digits.yaml",
                        [f"run.output_dir={tmp_path / 'smt'}", "run.progress=false", "student.model.block_out_channels=[8,16]",
                         *tiny]))
    assert len(OneStepPipeline.from_pretrained(str(tmp_path / "smt" / "pipeline"))(batch_size=2, class_labels=[1, 2]).images) == 2
    train(load_config(TrainConfig, None, [f"run.output_dir={tmp_path / 't'}", "run.progress=false", "data.source=digits",
                                          "data.image_size=8", "run.batch_size=16", "run.steps=3",
                                          "model.block_out_channels=[8,16]"]))
    distill(load_config(DistillConfig, repo / "configs" / "distill_smd_digits.yaml",
                        [f"run.output_dir={tmp_path / 'smd'}", "run.progress=false",
                         f"teacher.source=pipeline:{tmp_path / 't' / 'pipeline'}", *tiny]))
    assert len(OneStepPipeline.from_pretrained(str(tmp_path / "smd" / "pipeline"))(batch_size=2, class_labels=[3, 4]).images) == 2


@pytest.mark.parametrize("overrides, pattern", [
    (["method={name: smt, generator_alpha_min: 1.5}"], r"method\.generator_alpha_min: .*less than or equal to 1"),
    (["method={name: smt, generator_alpha_min: 0}"], r"method\.generator_alpha_min: .*greater than 0"),
    (["method={name: smt, alpha_zero_mass: -0.1}"], r"method\.alpha_zero_mass: .*greater than or equal to 0"),
    (["method={name: smd, discriminator: none}"], r"method\.discriminator: unknown option for smd"),  # always a head
])
def test_bad_score_of_mixture_options(overrides, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *overrides])


def test_smd_without_a_teacher_and_smt_without_an_alpha_input_are_clear_errors(tmp_path):
    from gendiv.training import DistillTrainer

    with pytest.raises(ConfigError, match="method smd distils a teacher"):
        DistillTrainer(load_config(DistillConfig, None, [f"run.output_dir={tmp_path / 'a'}", "method.name=smd",
                                                          "teacher.source=none", "data.source=toy:ring8_imbalanced"]))
    with pytest.raises(ValueError, match="scalar conditions need model.kind=unet_cond"):
        DistillTrainer(load_config(DistillConfig, None, [f"run.output_dir={tmp_path / 'b'}", "method.name=smt",
                                                          "teacher.source=none", "data.source=digits", "data.image_size=8",
                                                          "student.model.kind=unet", "student.model.block_out_channels=[8,16]"]))


def test_alpha_path_starts_at_zero_so_the_copy_equals_the_teacher_for_every_alpha():
    from gendiv import UNetDenoiser
    from gendiv.condition import Condition
    from gendiv.models import with_scalar_condition

    torch.manual_seed(0)
    mlp = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3)
    unet = UNetDenoiser(unet_class="UNet2DConditionModel", unet_config=dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16], down_block_types=["DownBlock2D"] * 2,
        up_block_types=["UpBlock2D"] * 2, mid_block_type="UNetMidBlock2D", norm_num_groups=4, layers_per_block=1))
    for teacher, x, labels in ((mlp, torch.randn(4, 2), torch.tensor([0, 1, 2, 0])), (unet, torch.randn(4, 1, 8, 8), None)):
        student = with_scalar_condition(teacher, "alpha")
        sigma = torch.tensor([0.01, 0.5, 2.0, 40.0])
        want = teacher(x, sigma, Condition(class_labels=labels) if labels is not None else None)
        for a in (0.0, 0.3, 1.0):
            got = student(x, sigma, alpha_condition(Condition(class_labels=labels) if labels is not None else None,
                                                    torch.full((4,), a)))
            # the zero-initialised α path adds exact zeros, but the extra input channel changes the matmul/conv
            # shapes, and CPU kernels (AVX2 vs AVX-512/AMX) may then sum in another order: equal to round-off, not bits
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        with torch.no_grad():  # once trained, α matters: the path is real, not disconnected
            next(p for n, p in student.named_parameters() if "inp.weight" in n or "cond_proj" in n).normal_()
        assert not torch.equal(student(x, sigma, alpha_condition(None if labels is None else Condition(class_labels=labels),
                                                                 torch.zeros(4))),
                               student(x, sigma, alpha_condition(None if labels is None else Condition(class_labels=labels),
                                                                 torch.ones(4))))
    with pytest.raises(ValueError, match="needs a UNet2DConditionModel"):
        with_scalar_condition(UNetDenoiser(unet_config=dict(sample_size=8, in_channels=1, out_channels=1,
                                                            block_out_channels=[8, 16], norm_num_groups=4,
                                                            down_block_types=["DownBlock2D"] * 2,
                                                            up_block_types=["UpBlock2D"] * 2)), "alpha")
